"""SIGHUP makes a running server read its API key file and its TLS files again, in every
front-end process: keys and certificates are rotated without a restart. A file that cannot be
used keeps what is in use."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from ops.serverproc import ServerProcess, free_port
from pki import make_pki

from embedsense.client import TLS, Client, Retry, Unauthenticated

# Fresh connections, so that with several front ends (one port, SO_REUSEPORT) each is asked.
CONNECTIONS = 8


def accepts(server: ServerProcess, key: str) -> list[bool]:
    """Whether each of CONNECTIONS new connections' calls is let in with `key`."""
    answers = []
    for _ in range(CONNECTIONS):
        with Client(server.target, api_key=key, timeout=10, retry=Retry(attempts=1)) as client:
            try:
                client.info()
                answers.append(True)
            except Unauthenticated:
                answers.append(False)
    return answers


def every_process_answers(server: ServerProcess, frontends: str, **client: object) -> None:
    """New connections until each front end (its replica name ends /0, /1...) has answered
    one: the kernel spreads connections over the processes sharing the port, by chance."""
    wanted = {f"/{i}" for i in range(int(frontends))} if frontends != "1" else {""}
    seen: set[str] = set()
    for _ in range(60):
        with Client(server.target, timeout=10, retry=Retry(attempts=1), **client) as c:
            replica = c.info().replica
        seen.add(replica[replica.rfind("/") :] if frontends != "1" else "")
        if seen >= wanted:
            return
    raise AssertionError(f"front ends that answered: {seen}; expected {wanted}")


def http_status(port: int, key: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def hang_up_until(server: ServerProcess, done: Callable[[], bool], why: str) -> None:
    """SIGHUP, then wait (20 s at most) until `done()`, the server still running; `why`
    says what did not happen."""
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not done():
        assert server.process.poll() is None, "SIGHUP stopped the server"
        assert time.monotonic() < deadline, why
        time.sleep(0.2)
    assert server.process.poll() is None, "SIGHUP stopped the server"


def logged(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text(errors="replace")


@pytest.mark.parametrize("frontends", ["1", "2"])
def test_sighup_reads_the_key_file_again_in_every_process(tmp_path, frontends):
    keys = tmp_path / "keys.txt"
    keys.write_text("old-key\n")
    http_port, log = free_port(), tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", None, "--api-key-file", str(keys),
                           "--frontends", frontends, "--http-port", str(http_port),
                           log=log)  # fmt: skip
    server.start()
    try:
        assert all(accepts(server, "old-key")) and not any(accepts(server, "new-key"))
        # Rotation: the new key beside the old one, callers move over, the old one goes.
        keys.write_text("old-key\nnew-key\n")
        hang_up_until(server, lambda: all(accepts(server, "new-key")), "new-key still refused")
        assert all(accepts(server, "old-key"))
        keys.write_text("new-key\n")
        hang_up_until(server, lambda: not any(accepts(server, "old-key")),
                      "a removed key still works after SIGHUP")  # fmt: skip
        # A file emptied (or mid-write) by mistake: the keys in use stay, the server serves.
        keys.write_text("")
        stays = "no key in it (expected one key a line); the keys in use stay"
        hang_up_until(server, logged(log, stays), f"no {stays!r} in the log")
        assert all(accepts(server, "new-key")) and not any(accepts(server, "old-key"))
        every_process_answers(server, frontends, api_key="new-key")
        # The HTTP port checks the same keys.
        statuses = {http_status(http_port, key) for key in ("new-key",) * CONNECTIONS}
        assert statuses == {200} and http_status(http_port, "old-key") == 401
    finally:
        server.stop()


def verified_by(ca: Path, port: int) -> bool:
    """Whether a new TLS connection to `port` on 127.0.0.1 finds a certificate `ca` signed."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])  # the gRPC port speaks h2 alone
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except ssl.SSLCertVerificationError:
        return False


@pytest.mark.parametrize("frontends", ["1", "2"])
def test_sighup_reads_the_tls_files_again_on_both_ports(tmp_path, frontends):
    """A renewed certificate is served from the next connection on, on the gRPC and the
    HTTP port, without a restart; a connection already open keeps working."""
    for name in ("first", "second", "served"):
        (tmp_path / name).mkdir()
    first, second, served = (
        make_pki(tmp_path / "first"),
        make_pki(tmp_path / "second"),
        tmp_path / "served",
    )
    for name in ("server.pem", "server.key"):
        shutil.copy(first / name, served / name)
    http_port, log = free_port(), tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", None, "--tls-cert", str(served / "server.pem"),
                           "--tls-key", str(served / "server.key"), "--frontends", frontends,
                           "--http-port", str(http_port), tls=first / "ca.pem",
                           log=log)  # fmt: skip
    server.start()
    ports = (server.port, http_port)
    try:
        with Client(server.target, tls=TLS(root_certificates=str(first / "ca.pem"))) as kept:
            kept.info()
            assert all(verified_by(first / "ca.pem", p) for p in ports * CONNECTIONS)
            for name in ("server.pem", "server.key"):
                shutil.copy(second / name, served / name)
            hang_up_until(
                server,
                lambda: all(verified_by(second / "ca.pem", p) for p in ports * CONNECTIONS),
                "the old certificate is served after SIGHUP",
            )
            assert not any(verified_by(first / "ca.pem", p) for p in ports)
            assert kept.info().dim == 384  # its connection was made before: it stays
            # A key that is not the certificate's: the pair in use stays, the server serves.
            shutil.copy(first / "server.key", served / "server.key")
            hang_up_until(server, logged(log, "the TLS in use stays"), "no TLS line in the log")
            assert all(verified_by(second / "ca.pem", p) for p in ports * CONNECTIONS)
            every_process_answers(
                server, frontends, tls=TLS(root_certificates=str(second / "ca.pem"))
            )
    finally:
        server.stop()
