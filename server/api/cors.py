"""Cross-origin requests from browsers, opt-in (--cors-allow-origin): which origins may call
the HTTP API, and the headers that say so. Pure decisions; the server adds the headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

METHODS = "GET, POST, OPTIONS"
# What a browser client sends beyond the simple headers: the key, JSON, a request id.
HEADERS = "Authorization, Content-Type, Content-Encoding, X-Request-Id"
EXPOSED = "x-request-id, Retry-After, WWW-Authenticate"
MAX_AGE_S = "600"  # how long a browser may keep a preflight's answer


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]  # allowed origins; "*" among them: any

    @classmethod
    def parse(cls, setting: str | None) -> CorsPolicy | None:
        """--cors-allow-origin's value (comma-separated origins, or *); None when unset."""
        origins = frozenset(o.strip().rstrip("/") for o in (setting or "").split(",") if o.strip())
        return cls(origins) if origins else None

    def allows(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self.origins or origin in self.origins)

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        return (
            method == "OPTIONS"
            and "Origin" in headers
            and "Access-Control-Request-Method" in headers
        )

    def headers(self, origin: str | None) -> dict[str, str]:
        """For an actual request's response: nothing for an origin not allowed (the browser
        then keeps the response from the page)."""
        if not self.allows(origin):
            return {}
        # A named origin is echoed, so caches must keep answers per origin.
        if "*" in self.origins:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSED}
        return {
            "Access-Control-Allow-Origin": str(origin),
            "Vary": "Origin",
            "Access-Control-Expose-Headers": EXPOSED,
        }

    def preflight_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """For a preflight (OPTIONS) request: what may follow, or nothing."""
        if not self.allows(headers.get("Origin")):
            return {}
        return {
            **self.headers(headers.get("Origin")),
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": HEADERS,
            "Access-Control-Max-Age": MAX_AGE_S,
        }
