"""The contract between server and client: the gRPC code generated from
proto/embedsense/v1 (`embedsense.proto.v1`, `make proto`) and the wire helpers beside it.
Both sides import it; it imports neither."""
