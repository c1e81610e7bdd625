"""Generated gRPC code for embedsense.v1 (see proto/generate.py)."""
