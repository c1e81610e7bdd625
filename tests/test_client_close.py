"""A client closed while its calls run: those calls raise RuntimeError, as a call made
after close() does. The async ones raised a bare asyncio.CancelledError though no one had
cancelled their task, the sync ones EmbedSenseError "CANCELLED: Channel closed!" (no
documented class). A task cancelled by its owner still raises CancelledError."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from embedsense.client import AsyncClient, Client

CLOSED_WHILE_RUNNING = "closed while the call ran"


class Silent:
    """A gRPC server on 127.0.0.1 whose Info never answers until it is stopped: a call is in
    flight for as long as a test wants."""

    def __init__(self) -> None:
        self.reached = threading.Event()  # a call is in the handler
        self.released = threading.Event()
        handler = grpc.unary_unary_rpc_method_handler(self._wait)
        service = grpc.method_handlers_generic_handler(
            "embedsense.v1.EmbedSense", {"Info": handler}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[service])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.reached.set()
        self.released.wait(30)
        return b""

    def stop(self) -> None:
        self.released.set()
        self.server.stop(0)


@pytest.fixture
def silent():
    server = Silent()
    yield server
    server.stop()


def test_a_sync_call_in_flight_when_the_client_closes_raises_runtime_error(silent):
    client = Client(silent.target, timeout=30)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            client.info()
        except BaseException as err:  # noqa: BLE001 - the test looks at what it was
            raised.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    assert silent.reached.wait(10)
    client.close()
    caller.join(10)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert CLOSED_WHILE_RUNNING in str(raised[0])


async def _in_flight(silent: Silent, client: AsyncClient) -> asyncio.Task:
    silent.reached.clear()
    task = asyncio.ensure_future(client.info())
    deadline = time.monotonic() + 10
    while not silent.reached.is_set():
        assert time.monotonic() < deadline, "the call never reached the server"
        await asyncio.sleep(0.01)
    return task


def test_an_async_call_in_flight_when_the_client_closes_raises_runtime_error(silent):
    async def main() -> None:
        client = AsyncClient(silent.target, timeout=30)
        task = await _in_flight(silent, client)
        await client.close()
        with pytest.raises(RuntimeError, match=CLOSED_WHILE_RUNNING):
            await task

    asyncio.run(main())


def test_an_async_call_its_owner_cancels_still_raises_cancelled_error(silent):
    async def main() -> None:
        async with AsyncClient(silent.target, timeout=30) as client:
            task = await _in_flight(silent, client)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Cancelled and closed at once: the owner's cancel is what the task says.
            task = await _in_flight(silent, client)
            task.cancel()
            await client.close()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
