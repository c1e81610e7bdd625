"""embedsense server: the batching engine, the index, the senses logic and the gRPC API."""
