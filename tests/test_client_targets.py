"""Targets are checked where a client is made: a port no server can have, a URL or a host
with a space in it is a ValueError naming the target and why, not a call to the wrong port
(gRPC takes a port modulo 65536) or an UNAVAILABLE at the first call."""

from __future__ import annotations

import re

import pytest

from embedsense.client import AsyncClient, Client

REFUSED = [
    ("127.0.0.1:115908", "port '115908': out of range (a port is 1 to 65535)"),
    ("127.0.0.1:0", "port '0': out of range"),
    ("[::1]:65536", "port '65536': out of range"),
    ("127.0.0.1:abc", "port 'abc': not a number"),
    ("127.0.0.1:-1", "port '-1': not a number"),
    ("http://127.0.0.1:50051", "http:// is not a gRPC target: give host:port"),
    ("bad host", "host 'bad host' is not a host name or an IP address"),
    (":50051", "no host before the port"),
    ("[not-ip]:7", "[not-ip] is not an IPv6 address"),
    ("dns:///localhost:99999", "port '99999': out of range"),
    ("ipv4:127.0.0.1:1,127.0.0.1:70000", "'127.0.0.1:70000': port '70000': out of range"),
    ("ipv4:127.0.0.1", "'127.0.0.1': expected address:port"),
    ("ipv6:[::1]:99999", "'[::1]:99999': port '99999': out of range"),
    ("ipv6:[::1]", "'[::1]': expected address:port ([address]:port for IPv6)"),  # not "no IPv6"
    ("grpc://127.0.0.1:50051", "grpc:// is not a gRPC target"),
    ("ipv4:::1:7", "'::1:7': not an IPv4 address"),
]


@pytest.mark.parametrize(("target", "why"), REFUSED)
@pytest.mark.parametrize("make", [Client, AsyncClient])
def test_a_target_no_server_can_have_is_refused_where_the_client_is_made(make, target, why):
    with pytest.raises(ValueError, match=re.escape(f"target {target!r}: {why}")):
        make(target)


def test_each_target_of_a_list_is_checked_and_named():
    """A list with a bad port was gRPC's bare "UNKNOWN: Failed to create channel"."""
    for make in (Client, AsyncClient):
        with pytest.raises(
            ValueError, match=re.escape("target '127.0.0.1:99999': port '99999': out of range")
        ):
            make(["127.0.0.1:1", "127.0.0.1:99999"])


ACCEPTED = [
    "127.0.0.1:50051",
    "127.0.0.1:65535",
    "localhost",
    "localhost:",
    "my-host_1.example:7",
    "[::1]:7",
    "::1",
    "unix:/tmp/embedsense.sock",
    "unix:///tmp/embedsense.sock",
    "dns:///localhost",
    "dns:///localhost:7",
    "dns://10.0.0.2:53/embedsense:7",
    "ipv4:127.0.0.1:1,127.0.0.1:2",
    "ipv6:[::1]:7,[::1]:8",
    "google-c2p:///embedsense",  # another resolver of grpc-core's: gRPC's to read
    ["localhost:1", "127.0.0.1:2"],
]


@pytest.mark.parametrize("target", ACCEPTED)
def test_the_targets_the_docs_list_still_make_a_client(target):
    Client(target).close()
    AsyncClient(target)  # its channels open at its first call, in that call's loop
