"""Real servers in their own processes on 127.0.0.1: `embedsense-server` (for the load and
fault scripts and the replica tests), a milvus-lite server, and a real Milvus standalone."""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from embedsense.client import TLS, Client, Retry, Unauthenticated, Unavailable


def stop_servers_on_sigterm() -> None:
    """On SIGTERM (a benchmark step's time limit, say): print where each thread is, then
    exit through the `finally` blocks that stop the servers this process started, rather
    than leaving them running beside the next step."""

    def stop(signum: int, frame: object) -> None:
        print("SIGTERM: stopping; where each thread was:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """The process's child processes now."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_serving(
    target: str, process: subprocess.Popen, limit_s: float = 180, tls: TLS | None = None
) -> None:
    """Wait until the server at `target` answers Info (or refuses it for want of a key: it
    answers); RuntimeError if `process` exits first or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    with Client(target, timeout=2, retry=Retry(attempts=1), tls=tls) as probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                probe.info()
                return
            except Unauthenticated:
                return
            except Unavailable:
                time.sleep(0.2)
    raise RuntimeError("the server did not come up")


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *extra: str,
        tls: Path | None = None,
        log: Path | None = None,
    ) -> None:
        """`tls`: the CA of a server started with TLS (--tls-cert in `extra`); `log`: a file
        for its log (stderr), else none is kept."""
        self.data_dir = data_dir
        self.log = log
        self.tls = TLS(root_certificates=str(tls)) if tls else None
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
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab") if self.log else subprocess.DEVNULL,
            env={**os.environ, "EMBEDSENSE_API_KEY": ""},
        )  # fmt: skip
        wait_until_serving(
            self.target, self.process, limit_s - (time.monotonic() - started), self.tls
        )
        return time.monotonic() - started

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def kill(self) -> None:
        """SIGKILL: no draining, no snapshot. Returns once its front-end processes (if
        any: --frontends) are gone too, so that a restart finds the port free."""
        fronts = children(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in fronts) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


class MilvusLiteServer:
    """`milvus-lite server` on 127.0.0.1 (never its default 0.0.0.0), data in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
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
                    self.stop()  # not left running when it came up too late
                    raise RuntimeError("the milvus-lite server did not come up") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


MILVUS_VERSION = "2.3.5"  # the oldest Milvus the backend supports (README)


def milvus_cache() -> Path:
    """Where the `milvus` wheel's venv is kept between runs: outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedsense-milvus"


class MilvusUnavailable(RuntimeError):
    """The `milvus` wheel could not be installed here (no index, no wheel for this platform)."""


def install_milvus(version: str = MILVUS_VERSION, limit_s: float = 600) -> Path:
    """`milvus-server` from PyPI's `milvus==version`, in a venv of its own under the cache,
    installed once (concurrent callers wait on a lock) and reused; its path."""
    cache = milvus_cache()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"v{version}"
    server = venv / "bin" / "milvus-server"
    with open(cache / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".installed").exists() and server.exists():
            return server
        staging = cache / f"v{version}.partial"
        subprocess.run(["rm", "-rf", str(staging), str(venv)], check=True)
        try:
            # The venv's own pip: the wheel must not touch the project's environment.
            subprocess.run(
                [sys.executable, "-m", "venv", str(staging)],
                check=True,
                capture_output=True,
                timeout=limit_s,
            )
            subprocess.run(
                [
                    str(staging / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    f"milvus=={version}",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=limit_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", None) or str(err)
            raise MilvusUnavailable(
                f"could not install milvus=={version} into {staging}: {detail!s:.500}"
            ) from err
        # The venv's scripts name their interpreter by path: move it, then fix them up.
        staging.rename(venv)
        for script in (venv / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                try:
                    text = script.read_text()
                except UnicodeDecodeError:
                    continue
                script.write_text(text.replace(str(staging), str(venv)))
        (venv / "pyvenv.cfg").write_text(
            (venv / "pyvenv.cfg").read_text().replace(str(staging), str(venv))
        )
        (venv / ".installed").touch()
    return server


class MilvusStandalone:
    """A real Milvus standalone (tests/ops/milvus_standalone.py) in a network namespace of its
    own, reachable only at `uri` on 127.0.0.1; its data in `data_dir`."""

    def __init__(self, data_dir: Path, version: str = MILVUS_VERSION, limit_s: float = 180):
        milvus_server = install_milvus(version)
        self.version = version
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        # As root a network namespace is enough; otherwise a user namespace makes one.
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
        self.process = subprocess.Popen(
            [
                *unshare,
                sys.executable,
                str(Path(__file__).with_name("milvus_standalone.py")),
                "--milvus-server",
                str(milvus_server),
                "--data",
                str(data_dir),
                "--listen-fd",
                str(self.listener.fileno()),
                "--limit-s",
                str(limit_s),
                "--owner-pid",
                str(os.getpid()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(self.listener.fileno(),),
            start_new_session=True,
        )
        line = self.process.stdout.readline()  # "ready", or nothing when it gave up
        if line.strip() != "ready":
            self.process.wait(30)
            error = self.process.stderr.read().strip()
            raise RuntimeError(f"Milvus {version} did not start: {error or 'no reason given'}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the launcher stops Milvus, then exits
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.listener.close()
