"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline
and its cache points at an empty folder, so only models that tests build, or that a
package ships, can load."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="embedsense-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.pop("EMBEDSENSE_ALLOW_DOWNLOAD", None)
# Servers the tests start as programs, with dtype auto, decide as on a processor without
# native bf16, whatever this one has: a test's result must not depend on the machine.
# Tests that check bf16 ask for it; tests of `auto` itself set the flags they need.
os.environ["EMBEDSENSE_CPU_FLAGS"] = HOST_WITHOUT_NATIVE_BF16 = "sse4_2 avx2 avx512f"

import pytest  # noqa: E402
import torch  # noqa: E402

# Parity checks compare float32 results to 1e-4; keep the math path identical run to run.
torch.manual_seed(0)


@pytest.fixture(scope="session")
def e5():
    """The offline default model, loaded once for the whole session."""
    from embedsense.model import load_model

    return load_model()


class ServerThread:
    """A real EmbedSenseServer on 127.0.0.1 (an ephemeral port), run by its own event loop
    in a background thread, so tests can call it with blocking clients. It computes in
    float32 unless the test passes an `engine` that says otherwise."""

    def __init__(self, model, data_dir, **settings) -> None:
        import asyncio
        import threading

        from embedsense.server.api.settings import ServerSettings
        from embedsense.server.config import EngineConfig

        settings.setdefault("engine", EngineConfig(dtype="float32"))

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        base = ServerSettings(host="127.0.0.1", port=0, data_dir=data_dir)
        self.settings = ServerSettings(**{**base.__dict__, **settings})
        self.server = self.make_server(self.settings, model)
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    def make_server(self, settings, model):
        from embedsense.server.api.app import EmbedSenseServer

        return EmbedSenseServer(settings, model)

    def run(self, coroutine, timeout: float = 120):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.server.stop(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def break_engine(self) -> None:
        """Make the engine's worker fail outside a forward, as a bug would: it fails at its
        next batch (the one it waits for runs first: a bulk embed sent here), and from then
        on the engine is broken for good."""
        import time

        from embedsense.client import Client

        engine = self.server.engine
        engine._next_batch = lambda: 1 / 0
        with Client(self.target, timeout=60) as c:
            c.encode(["苹果"], priority="bulk")  # the worker's (the query lane takes queries)
        deadline = time.monotonic() + 10
        while engine.broken is None:
            assert time.monotonic() < deadline, "the engine's worker never failed"
            time.sleep(0.05)


class FrontEndsThread(ServerThread):
    """The same server as `--frontends N`: this process runs the engine and the index (in a
    background thread's loop, as ServerThread), N front-end processes serve the port."""

    def __init__(self, model, data_dir, count: int = 2, **settings) -> None:  # noqa: D107
        self.count = count
        super().__init__(model, data_dir, **settings)

    def make_server(self, settings, model):
        from embedsense.server.frontends.host import EngineHost

        return EngineHost(settings, self.count, model)


@pytest.fixture
def started(monkeypatch):
    """The server's main() up to serve(): (exit status, the settings serve() got or None),
    with no EMBEDSENSE_* setting but those a test gives."""
    from embedsense.server import cli
    from embedsense.server.api.settings import ServerSettings

    seen: list[ServerSettings] = []

    async def serve(settings: ServerSettings) -> None:
        seen.append(settings)

    monkeypatch.setattr(cli, "serve", serve)
    monkeypatch.setattr(cli, "configure_logging", lambda **_: None)
    for name in list(os.environ):
        if name.startswith("EMBEDSENSE_") and name != "EMBEDSENSE_CPU_FLAGS":
            monkeypatch.delenv(name)

    def run(*argv: str, **environ: str) -> tuple[int, ServerSettings | None]:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        seen.clear()
        status = cli.main(list(argv))
        return status, (seen[-1] if seen else None)

    return run


@pytest.fixture(scope="session")
def server(e5, tmp_path_factory):
    """One server for the whole session, on the real default model."""
    running = ServerThread(e5, tmp_path_factory.mktemp("server-data"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (tests/pki.py)."""
    from pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def client(server):
    from embedsense.client import Client

    with Client(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory):
    """A real Milvus standalone (PyPI's `milvus` wheel, MILVUS_VERSION) for the whole session,
    reachable only on 127.0.0.1 (tests/ops/milvus_standalone.py): its URI. The wheel is
    installed once into a venv under the user's cache; the tests skip, saying why, only where
    it cannot be installed."""
    from ops.serverproc import MilvusStandalone, MilvusUnavailable, install_milvus

    try:
        install_milvus()
    except MilvusUnavailable as err:
        pytest.skip(str(err))
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone"))
    yield server.uri
    server.stop()
