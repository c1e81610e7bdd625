"""Where a client connects: the gRPC target of one server or of several, checked where the
client is made.

gRPC takes a port modulo 65536 (127.0.0.1:115908 dials port 50372) and reports a URL, a
host with a space or a port that is not a number only as UNAVAILABLE at the first call: a
ValueError naming the target and why says it where the mistake is.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

from embedsense.proto import DEFAULT_PORT

Targets = str | Sequence[str]

SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
ADDRESS_LISTS = ("ipv4:", "ipv6:")  # ipv4:addr:port,addr:port
URL_SCHEMES = ("http", "https", "grpc", "grpcs")  # a URL's, where host:port was meant
PORTS = range(1, 65536)
# A name a resolver may look up: letters of any script, digits, dots, dashes, underscores
# (container names have them); a space or a slash is a typo or a URL.
HOST_NAME = re.compile(r"[\w.-]+")


def grpc_target(targets: Targets) -> str:
    """One gRPC target for one or several servers: a single "host:port" or "dns:///name:port"
    as it is (DNS may give several addresses: all are balanced); several "host:port" as one
    `ipv4:`/`ipv6:` address list, names resolved now. A host without a port is the server's
    default port (`with_port`). Raises ValueError naming a target no server can have."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f'targets {targets!r}: expected a "host:port" or a list of them')
    targets = [t.strip() for t in targets]
    dialled = [checked_target(t) for t in targets]
    if len(dialled) == 1:
        return dialled[0]
    addresses = [_address(d, given) for d, given in zip(dialled, targets, strict=True)]
    families = {family for family, _ in addresses}
    if len(families) != 1:
        raise ValueError(f"targets {targets}: mix of IPv4 and IPv6 addresses; use one family")
    return f"{families.pop()}:" + ",".join(address for _, address in addresses)


def checked_target(target: str, port: int | str | None = None) -> str:
    """`target` with a port where it names none (`with_port`); ValueError naming it and why
    where no server can be at it."""
    dialled = with_port(target, port)
    if (problem := target_problem(dialled)) is not None:
        raise ValueError(f"target {target!r}: {problem}")
    return dialled


def with_port(target: str, port: int | str | None = None) -> str:
    """`target` with a port where it names none (`port`, or the server's default): gRPC
    would dial 443. "localhost" is "localhost:50051", "::1" and "[::1]" are "[::1]:50051",
    "dns:///name" is "dns:///name:50051"; targets of other schemes are left as they are."""
    port = port or DEFAULT_PORT
    if target.startswith("dns:"):
        host = _dns_host(target)
    elif target.startswith(SCHEMES) or "://" in target:
        return target
    else:
        host = target
    if host.count(":") > 1 and not host.startswith("["):  # a bare IPv6 address
        return f"{target[: len(target) - len(host)]}[{host}]:{port}"
    if host.endswith(":"):  # an empty port
        return f"{target}{port}"
    names_port = "]:" in host if host.startswith("[") else ":" in host
    return target if names_port else f"{target}:{port}"


def _dns_host(target: str) -> str:
    """The host[:port] of a dns:[//authority/]host[:port] target."""
    return target[len("dns:") :].rsplit("/", 1)[-1]


def target_problem(target: str) -> str | None:
    """Why no server can be at `target` (one `with_port` has given its port), or None."""
    if target.startswith("dns:"):
        return host_port_problem(_dns_host(target))
    if target.startswith(ADDRESS_LISTS):
        return address_list_problem(target)
    if target.startswith(SCHEMES):  # a path (unix:) or another resolver's name: gRPC's to read
        return None
    if "://" in target:
        scheme = target.split("://", 1)[0]
        if scheme.lower() in URL_SCHEMES:
            return (
                f"{scheme}:// is not a gRPC target: give host:port (or dns:///host:port, unix:PATH)"
            )
        return None  # another resolver's (google-c2p:///name): gRPC's to read
    return host_port_problem(target)


def host_port_problem(host_port: str) -> str | None:
    host, _, port = host_port.rpartition(":")
    if (problem := host_problem(host)) is not None:
        return problem
    return None if (why := port_problem(port)) is None else f"port {port!r}: {why}"


def host_problem(host: str) -> str | None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if not host:
        return "no host before the port"
    if not HOST_NAME.fullmatch(host):
        return f"host {host!r} is not a host name or an IP address"
    return None


def port_problem(port: str) -> str | None:
    """Why `port` (as written) is no TCP port, or None."""
    if not (port.isascii() and port.isdigit()):
        return "not a number (a port is 1 to 65535)"
    if int(port) not in PORTS:
        return "out of range (a port is 1 to 65535)"
    return None


def address_list_problem(target: str) -> str | None:
    """What is wrong with an `ipv4:` or `ipv6:` list of address:port, or None."""
    family, _, addresses = target.partition(":")
    for address in addresses.lstrip("/").split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host or (address.startswith("[") and "]:" not in address):
            return f"{address!r}: expected address:port ([address]:port for IPv6)"
        try:
            ip = ipaddress.ip_address(host[1:-1] if family == "ipv6" else host)
        except ValueError:
            ip = None
        if ip is None or f"ipv{ip.version}" != family:
            return f"{address!r}: not an IPv{family[-1]} address"
        if (why := port_problem(port)) is not None:
            return f"{address!r}: port {port!r}: {why}"
    return None


def _address(dialled: str, given: str) -> tuple[str, str]:
    """A checked "host:port" as (family, address) for an address list, its name resolved;
    errors name the target as `given`."""
    host, sep, port = dialled.rpartition(":")
    if not sep or "/" in dialled or dialled.startswith(SCHEMES):
        raise ValueError(f"target {given!r}: expected host:port")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as err:  # no such name: said of the target as given
            raise ValueError(f"target {given!r}: {err.strerror or err}") from None
        ip = ipaddress.ip_address(info[0][4][0])
    return ("ipv6", f"[{ip}]:{port}") if ip.version == 6 else ("ipv4", f"{ip}:{port}")
