"""One server per data directory. Two servers on one directory would each keep their own
index of the shared store and answer differently (a write through one unseen by the other's
searches), and move each other's snapshots. The first to open it holds an exclusive lock on
a file in it (flock: the kernel releases it when the process ends, however it ends); a
second is refused, naming the first's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from embedsense.server.index.errors import DataDirInUse

LOCK_FILE = "embedsense.lock"


class DataDirLock:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise DataDirInUse(
                f"data directory {directory} is in use by another embedsense server"
                f"{f' (pid {holder})' if holder else ''}: stop it first, or give this one "
                "another data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
