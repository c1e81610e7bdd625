"""Real servers in their own processes on 127.0.0.1: `embedsense-server` (for the load and
fault scripts and the replica tests) and a milvus-lite server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from embedsense.client import Client, Retry, Unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.extra = extra
        self.process: subprocess.Popen | None = None

    def start(self, limit_s: float = 180) -> float:
        """Start and wait until it answers; the seconds that took."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "EMBEDSENSE_API_KEY": ""},
        )  # fmt: skip
        with Client(self.target, timeout=2, retry=Retry(attempts=1)) as probe:
            while time.monotonic() - started < limit_s:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}")
                try:
                    probe.info()
                    return time.monotonic() - started
                except Unavailable:
                    time.sleep(0.2)
        raise RuntimeError("the server did not come up")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def kill(self) -> None:
        """SIGKILL: no draining, no snapshot."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


class MilvusLiteServer:
    """`milvus-lite server` on 127.0.0.1 (never its default 0.0.0.0), data in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite.cmdline", "server", "--data-dir", str(data_dir),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the milvus-lite server did not come up") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
