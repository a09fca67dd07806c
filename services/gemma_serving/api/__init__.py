"""Generated gRPC code (scripts/gen_protos.py) and proto <-> domain conversion."""
