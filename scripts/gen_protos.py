"""Generate the Python gRPC code in services/gemma_serving/api from protos/.

Usage: python scripts/gen_protos.py [--check]

--check regenerates into a temporary directory and exits 1 if the committed files differ (CI runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("gemma/serving/v1")
API_DIR = ROOT / "services" / "gemma_serving" / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto of the package and flatten the output into out_dir with package imports."""
    protos = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={raw}", f"--pyi_out={raw}", f"--grpc_python_out={raw}"]
        if protoc.main(args + [str(p) for p in protos]) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted((Path(raw) / PROTO_PACKAGE).iterdir()):
            text = src.read_text()
            # protoc writes imports rooted at the proto package; the generated modules live in gemma_serving.api.
            text = re.sub(r"^from gemma\.serving\.v1 import", "from gemma_serving.api import", text, flags=re.M)
            # Messages record their module for pickling (Ray pickles them across processes): make it importable.
            text = re.sub(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'gemma\.serving\.v1\.", r"\1'gemma_serving.api.",
                          text)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
        return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args()
    if not args.check:
        for old in API_DIR.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for path in generate(API_DIR):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name for p in generate(Path(tmp))}
        committed = {p.name for p in API_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        stale = sorted(fresh ^ committed)
        stale += [n for n in sorted(fresh & committed) if not filecmp.cmp(Path(tmp) / n, API_DIR / n, shallow=False)]
        if stale:
            print(f"generated code is stale, run scripts/gen_protos.py: {stale}", file=sys.stderr)
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
