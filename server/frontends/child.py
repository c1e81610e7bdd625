"""A front-end process: `python -m embedsense.server.frontends.child FD`, started by the
engine process (host.py) with FD its end of their bridge. It serves the gRPC and HTTP ports
(shared with its siblings) with the same API code, limits and keys as a one-process server,
from the engine process's engine, index and explainer (remote.py).

It stops on SIGTERM from the engine process, finishing its in-flight calls; at once when the
bridge ends (the engine process is gone: nothing it has could be answered). SIGINT is left to
the engine process, which stops the front ends in order (a terminal's Ctrl-C reaches all).
"""

from __future__ import annotations

import signal

# First, before seconds of imports: the engine process forwards SIGHUP to every front end it
# has started, and until the server's own handler is set, the default would end this one.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import asyncio  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from embedsense.server.api.app import (  # noqa: E402
    EmbedSenseServer,
    Parts,
    StartupError,
    reload_on_hangup,
)
from embedsense.server.api.observability import configure_logging  # noqa: E402
from embedsense.server.frontends.bridge import Bridge, BridgeClosed  # noqa: E402
from embedsense.server.frontends.remote import (  # noqa: E402
    Facts,
    FrontEngine,
    FrontMetrics,
    RemoteCatalog,
    RemoteExplainer,
)

log = logging.getLogger(__name__)


async def run(sock: socket.socket) -> None:
    lost, terminated = asyncio.Event(), asyncio.Event()
    metrics: FrontMetrics | None = None

    async def metric_families() -> list[Any]:
        return list(metrics.registry.collect()) if metrics else []

    bridge = await Bridge.open(sock, {"metric_families": metric_families}, lost.set)
    try:
        facts: Facts = await bridge.call("hello")  # once the engine process has its model
    except BridgeClosed:  # it failed to start, and says why itself
        return
    configure_logging(json_lines=facts.json_logs, level=facts.log_level)
    metrics = FrontMetrics(bridge, facts.settings.access_log)
    parts = Parts(
        FrontEngine(facts, bridge),
        RemoteCatalog(bridge, facts.index_kind),
        RemoteExplainer(bridge),
        name=str(facts.index),
    )  # type: ignore[arg-type]
    server = EmbedSenseServer(facts.settings, parts=parts, metrics=metrics)
    reload_on_hangup(server.reload)
    try:
        await server.start()
    except StartupError as err:
        await bridge.call("ready", str(err))
        return
    await bridge.call("ready", None)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
    waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(terminated.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if lost.is_set():
        log.warning("front end %d: the engine process is gone; stopping now", facts.index)
    await server.stop(0 if lost.is_set() else None)
    bridge.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(run(socket.socket(fileno=int(sys.argv[1]))))


if __name__ == "__main__":
    main()
