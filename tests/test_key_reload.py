"""SIGHUP makes a running server read its API key file again, in every front-end process:
keys are rotated without a restart. A file that cannot be read keeps the keys in use."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import pytest
from ops.serverproc import ServerProcess, free_port

from embedsense.client import Client, Retry, Unauthenticated

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


def http_status(port: int, key: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def hang_up_until(server: ServerProcess, key: str, limit_s: float = 20) -> None:
    """SIGHUP, then wait until every connection is let in with `key`."""
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + limit_s
    while not all(accepts(server, key)):
        assert server.process.poll() is None, "SIGHUP stopped the server"
        assert time.monotonic() < deadline, f"{key} still refused after SIGHUP"
        time.sleep(0.2)


@pytest.mark.parametrize("frontends", ["1", "2"])
def test_sighup_reads_the_key_file_again_in_every_process(tmp_path, frontends):
    keys = tmp_path / "keys.txt"
    keys.write_text("old-key\n")
    http_port = free_port()
    server = ServerProcess(tmp_path / "data", None, "--api-key-file", str(keys),
                           "--frontends", frontends, "--http-port", str(http_port))  # fmt: skip
    server.start()
    try:
        assert all(accepts(server, "old-key")) and not any(accepts(server, "new-key"))
        # Rotation: the new key beside the old one, callers move over, the old one goes.
        keys.write_text("old-key\nnew-key\n")
        hang_up_until(server, "new-key")
        assert all(accepts(server, "old-key"))
        keys.write_text("new-key\n")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while any(accepts(server, "old-key")):
            assert time.monotonic() < deadline, "a removed key still works after SIGHUP"
            time.sleep(0.2)
        # A file emptied (or mid-write) by mistake: the keys in use stay, the server serves.
        keys.write_text("")
        server.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert server.process.poll() is None
        assert all(accepts(server, "new-key")) and not any(accepts(server, "old-key"))
        # The HTTP port checks the same keys.
        statuses = {http_status(http_port, key) for key in ("new-key",) * CONNECTIONS}
        assert statuses == {200} and http_status(http_port, "old-key") == 401
    finally:
        server.stop()
