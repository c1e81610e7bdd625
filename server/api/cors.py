"""Cross-origin requests from browsers, opt-in (--cors-allow-origin): which origins may call
the HTTP API, and the headers that say so; and which web pages may not write at all. Pure
decisions; the server adds the headers and refuses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

METHODS = "GET, POST, DELETE, OPTIONS"
# What a browser client sends beyond the simple headers: the key, JSON, a request id, a
# priority (a preflight's others are allowed too).
HEADERS = "Authorization, Content-Type, Content-Encoding, X-Request-Id, X-Priority"
EXPOSED = "x-request-id, Retry-After, WWW-Authenticate"
MAX_AGE_S = "600"  # how long a browser may keep a preflight's answer
# Methods a browser sends from another site's page that change nothing (a form or a
# text/plain POST needs no preflight, so CORS alone cannot stop one from running).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986's (browser extensions, app shells)
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")


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
        """For an actual request's response: only Vary for an origin not allowed (the
        browser then keeps the response from the page)."""
        # Named origins are echoed one at a time, so every answer depends on Origin, a
        # refusal or an answer to no origin too: a cache must not give one to another.
        vary = {} if "*" in self.origins else {"Vary": "Origin"}
        if not self.allows(origin):
            return vary
        return {
            "Access-Control-Allow-Origin": "*" if "*" in self.origins else str(origin),
            **vary,
            "Access-Control-Expose-Headers": EXPOSED,
        }

    def preflight_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """For a preflight (OPTIONS) request: what may follow, or nothing. The headers asked
        for are allowed as asked: SDKs add their own (the openai JS SDK's x-stainless-*),
        and the API key still guards every call."""
        if not self.allows(headers.get("Origin")):
            return {}
        return {
            **self.headers(headers.get("Origin")),
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": allowed_headers(
                headers.get("Access-Control-Request-Headers", "")
            ),
            "Access-Control-Max-Age": MAX_AGE_S,
        }


def origins_as_sent(setting: str) -> str:
    """--cors-allow-origin's value with each origin as a browser's Origin header writes it
    (scheme and host in lower case, the scheme's default port and a trailing slash left
    out), so that it matches; ValueError naming an origin no browser sends."""
    origins = (o.strip() for o in setting.split(","))
    return ",".join(_origin_as_sent(o.rstrip("/")) for o in origins if o)


def _origin_as_sent(origin: str) -> str:
    if origin == "*":
        return origin
    not_one = ValueError(
        f"{origin!r} is not an origin: expected scheme://host[:port] (https://app.example, "
        "chrome-extension://ID), as a browser's Origin header sends it, or *"
    )
    try:
        parts = urlsplit(origin)
        port = parts.port  # ValueError: no number, or past 65535
        host = _host_as_sent(parts.hostname or "")
    except (ValueError, UnicodeError):
        raise not_one from None
    scheme = parts.scheme.lower()
    if (
        not _SCHEME.fullmatch(scheme)
        or port == 0
        or any((parts.path, parts.query, parts.fragment, parts.username, parts.password))
    ):
        raise not_one
    default = DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _host_as_sent(host: str) -> str:
    """A host as an Origin header writes it: an IPv6 address in its short form and
    brackets, a name in lower case and in IDNA's ASCII (bücher.example: xn--bcher-kva...)."""
    try:
        return f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        pass
    name = host.encode("idna").decode("ascii") if host else ""
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(host)
    return name


def allowed_headers(asked: str) -> str:
    """HEADERS, and the others a preflight asks for (a comma-separated list)."""
    known = {h.lower() for h in HEADERS.split(", ")}
    more = [h.strip() for h in asked.split(",") if h.strip() and h.strip().lower() not in known]
    return ", ".join([HEADERS, *dict.fromkeys(more)])


def refused_origin(
    method: str, headers: Mapping[str, str], policy: CorsPolicy | None
) -> str | None:
    """The Origin of a request that may change something, sent by a web page that is
    neither allowed by `policy` nor this server's own (its host and port the request's
    Host); None for any other request, one with no Origin (curl, SDKs) among them."""
    origin = headers.get("Origin")
    if origin is None or method in SAFE_METHODS:
        return None
    if (policy is not None and policy.allows(origin)) or same_origin(origin, headers.get("Host")):
        return None
    return origin


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `origin` (scheme://host[:port]) names the host and port of a request's Host
    header (the port left out: the scheme's default)."""
    page = urlsplit(origin)
    served = urlsplit(f"//{host or ''}")
    try:
        default = DEFAULT_PORTS.get(page.scheme)
        ours = (served.hostname, served.port or default)
        return page.hostname is not None and (page.hostname, page.port or default) == ours
    except ValueError:  # a port that is no number
        return False
