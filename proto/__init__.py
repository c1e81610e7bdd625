"""The contract between server and client: the gRPC code generated from
proto/embedsense/v1 (`embedsense.proto.v1`, `make proto`) and the wire helpers beside it.
Both sides import it; it imports neither."""

# The server's gRPC port unless told another; a client's target without a port means it
# (gRPC's own default, 443, is no embedsense server's).
DEFAULT_PORT = 50051

# The most documents one Scroll page holds (its `limit`; the SDK's scroll batch_size).
MAX_SCROLL_PAGE = 10_000
