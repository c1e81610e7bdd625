"""A real Milvus standalone (PyPI's `milvus` wheel, "embedded Milvus") on 127.0.0.1 only.

The wheel's `milvus-server` binds every Milvus port (the proxy's 19530, the coordinators',
the metrics port 9091) on all interfaces; none of it has a listen-address setting. So it
runs in a network namespace of its own, whose only interface is loopback: nothing outside
this machine, nor any other process on it, can reach those ports. One port reaches it: a
socket listening on 127.0.0.1 of the caller's namespace, opened before the namespace is
made and inherited by the relay below, which accepts there and connects to Milvus's proxy
inside.

    python milvus_standalone.py --milvus-server PATH --data DIR --listen-fd N --owner-pid PID

is started by `MilvusStandalone` (in `unshare -n`, or `unshare -rn` when not root); it
prints "ready" once Milvus answers its health check, relays until SIGTERM (or until the
owner process is gone), then stops Milvus.
Standard library only: it runs under any Python 3.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

PROXY_PORT = 19530  # inside the namespace: the wheel's defaults never clash with anything
HEALTH_URL = "http://127.0.0.1:9091/healthz"


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new namespace's loopback is down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, request)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:  # one direction closed: close both, the other thread's recv then ends too
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(listener: socket.socket) -> None:
    while True:
        outside, _ = listener.accept()
        try:
            inside = socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=10)
        except OSError:
            outside.close()
            continue
        inside.settimeout(None)
        for s in (outside, inside):  # gRPC sends small frames: no Nagle delay on either hop
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in ((outside, inside), (inside, outside)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def wait_healthy(server: subprocess.Popen, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"milvus-server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(HEALTH_URL, timeout=2) as reply:
                if b"OK" in reply.read():
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"Milvus was not healthy after {limit_s:.0f} s")


def exited(process: subprocess.Popen, limit_s: float) -> bool:
    """Whether it exits within limit_s. Polled, not Popen.wait(): the SIGTERM handler polls
    too while the main thread waits, and Popen.wait holds a lock that poll would wait on."""
    deadline = time.monotonic() + limit_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def group_gone(server: subprocess.Popen, limit_s: float) -> bool:
    """Whether every process of the server's group has exited within limit_s: milvus-server
    dies at once on SIGTERM, the Milvus it started may take its time or hang."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        server.poll()  # reap milvus-server, or the group never empties
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--milvus-server", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--limit-s", type=float, default=180)
    parser.add_argument("--owner-pid", type=int, required=True)
    args = parser.parse_args()
    listener = socket.socket(fileno=args.listen_fd)
    loopback_up()
    log = open(os.path.join(args.data, "milvus-server.log"), "ab")  # noqa: SIM115
    server = subprocess.Popen(
        [args.milvus_server, "--data", args.data, "--proxy-port", str(PROXY_PORT)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def stop(*_: object) -> None:
        # milvus-server and the Milvus it started share a process group: SIGTERM to both
        # (to milvus-server alone would leave Milvus running), SIGKILL after a grace period.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            if group_gone(server, 10):
                break
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait_healthy(server, args.limit_s)
    print("ready", flush=True)
    threading.Thread(target=relay, args=(listener,), daemon=True).start()
    while not exited(server, 1.0):
        try:
            os.kill(args.owner_pid, 0)
        except ProcessLookupError:  # whoever started us died without stopping us: stop
            stop()
    sys.exit(f"milvus-server exited with {server.returncode}")


if __name__ == "__main__":
    main()
