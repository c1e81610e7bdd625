"""Call metadata that both sides read: names of headers and trailers beside the messages."""

# On RESOURCE_EXHAUSTED, this trailer marks "the server is overloaded: try again later".
# gRPC's own RESOURCE_EXHAUSTED ("message larger than max") comes without it, and retrying
# that fails again however often it is tried.
OVERLOADED_TRAILER = "x-embedsense-overloaded"

# On RESOURCE_EXHAUSTED, this trailer marks "the reply would be over max_message_bytes":
# the same request fails again, a smaller one may not (the SDK's scroll asks for smaller
# pages).
REPLY_TOO_LARGE_TRAILER = "x-embedsense-reply-too-large"

# On UNAVAILABLE the server itself answers (its index or engine down, or closing), this
# trailer is -1: gRPC's own retries leave the call alone (the SDK retries it, with backoff).
# Its presence also tells "the server said so" from "the server could not be reached".
RETRY_PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
