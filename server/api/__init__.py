"""The gRPC API: the service (RPCs), the running server, its settings."""
