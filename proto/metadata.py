"""Call metadata that both sides read: names of headers and trailers beside the messages."""

# On RESOURCE_EXHAUSTED, this trailer marks "the server is overloaded: try again later".
# gRPC's own RESOURCE_EXHAUSTED ("message larger than max") comes without it, and retrying
# that fails again however often it is tried.
OVERLOADED_TRAILER = "x-embedsense-overloaded"
