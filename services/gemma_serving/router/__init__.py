"""The router: gRPC ingress, validation, routing to the modality services."""
