"""One connection between the engine process and a front-end process: calls both ways, many
in flight, answered in any order, over a socketpair the engine process made (no address, no
file: nothing else can connect, and when either process dies, even by SIGKILL, the other reads
the end of the stream).

A frame is a pickled tuple behind its 4-byte length: (CALL, id, name, args),
(REPLY, id, ok, value) or (CANCEL, id). Frames written in one turn of the event loop leave in
one write, so that many concurrent requests cost the two processes one system call each way,
not one each. A cancelled call sends CANCEL: the other side cancels the handler serving it
(and so drops its rows still queued in the engine).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

CALL, REPLY, CANCEL = 0, 1, 2
HEADER = struct.Struct("!I")

Handler = Callable[..., Awaitable[Any]]


class BridgeClosed(ConnectionError):
    """The other process is gone (or the bridge was closed): the call cannot be answered."""


class Bridge(asyncio.Protocol):
    def __init__(self, handlers: Mapping[str, Handler], on_lost: Callable[[], None]) -> None:
        self._handlers = dict(handlers)
        self._on_lost = on_lost
        self._ids = itertools.count()
        self._calls: dict[int, asyncio.Future[Any]] = {}  # ours, awaiting their replies
        self._serving: dict[int, asyncio.Task[None]] = {}  # theirs, being answered
        self._received = bytearray()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    @classmethod
    async def open(
        cls, sock: socket.socket, handlers: Mapping[str, Handler], on_lost: Callable[[], None]
    ) -> Bridge:
        """The bridge over `sock`, one end of a connected pair; `on_lost` when it ends."""
        loop = asyncio.get_running_loop()
        _, bridge = await loop.connect_accepted_socket(lambda: cls(handlers, on_lost), sock)
        return bridge

    async def call(self, name: str, *args: Any) -> Any:
        """The other side's handlers[name](*args): its value, or the exception it raised."""
        if self.closed:
            raise BridgeClosed("the engine process's connection is closed")
        call_id = next(self._ids)
        # Pickled here: a call whose arguments cannot cross fails its own caller (an error
        # sent as a reply would carry an id that, there, names one of the other side's calls).
        data = pickle.dumps((CALL, call_id, name, args), protocol=pickle.HIGHEST_PROTOCOL)
        reply = self._calls[call_id] = self._loop.create_future()
        self._write(data)
        try:
            return await reply
        except asyncio.CancelledError:
            if self._calls.pop(call_id, None) is not None and not self.closed:
                self._send((CANCEL, call_id))
            raise

    def call_blocking(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """call() from another thread (one the event loop is not running in), waiting; at
        most `timeout` seconds, when given (TimeoutError, and the call is cancelled)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # the reply could never be read: fail rather than hang
            raise RuntimeError("call_blocking() on the bridge's event loop thread; await call()")
        future = asyncio.run_coroutine_threadsafe(self.call(name, *args), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # call() then sends the other side a CANCEL
            raise TimeoutError(f"{name}: no answer from the other process in {timeout} s") from None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._received
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            try:
                frame = pickle.loads(buffer[start + HEADER.size : end])
            except Exception:  # noqa: BLE001 - a frame this side cannot read: drop it alone
                log.exception("an unreadable frame of %d bytes from the other process", size)
            else:
                self._on_frame(frame)
            start = end
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for reply in self._calls.values():
            if not reply.done():
                reply.set_exception(BridgeClosed("the engine process's connection was lost"))
        self._calls.clear()
        for task in self._serving.values():
            task.cancel()
        self._on_lost()

    # ------------------------------------------------------------ frames

    def _on_frame(self, frame: tuple[Any, ...]) -> None:
        kind, call_id = frame[0], frame[1]
        if kind == CALL:
            task = self._serving[call_id] = self._loop.create_task(self._serve(call_id, *frame[2:]))
            # Not in _serve's own `finally`: a task cancelled before its first step (its
            # CANCEL in the same read) never enters it.
            task.add_done_callback(lambda _: self._serving.pop(call_id, None))
        elif kind == REPLY:
            reply = self._calls.pop(call_id, None)
            if reply is None or reply.done():  # cancelled meanwhile
                return
            _, _, ok, value = frame
            if ok:
                reply.set_result(value)
            else:
                reply.set_exception(value)
        elif kind == CANCEL:
            task = self._serving.get(call_id)
            if task is not None:
                task.cancel()

    async def _serve(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self._handlers[name](*args)
        except asyncio.CancelledError:  # the caller went away: it waits for no reply
            return
        except Exception as err:  # noqa: BLE001 - the caller gets it, as if raised there
            self._send((REPLY, call_id, False, transportable(err)))
        else:
            self._send((REPLY, call_id, True, value))

    def _send(self, frame: tuple[Any, ...]) -> None:
        """A REPLY or a CANCEL (a CALL is pickled by call())."""
        try:
            data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - a value that cannot cross: its caller hears
            data = pickle.dumps((REPLY, frame[1], False, transportable(err)))
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing += (HEADER.pack(len(data)), data)

    def _flush(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.writelines(self._outgoing)
        self._outgoing = []


def transportable(err: BaseException) -> Exception:
    """`err` if it survives pickling, else the nearest of its classes that does with its
    message (an exception whose __init__ takes other arguments than its message does not):
    the caller maps it to the same status as the process that raised it would."""
    for kind in type(err).__mro__:
        if not issubclass(kind, Exception):
            break
        candidate = err if kind is type(err) else _made(kind, str(err))
        if candidate is None:
            continue
        try:
            pickle.loads(pickle.dumps(candidate))
        except Exception:  # noqa: BLE001, S112 - try the next class up
            continue
        return candidate  # type: ignore[return-value]
    return RuntimeError(f"{type(err).__name__}: {err}")


def _made(kind: type, message: str) -> Exception | None:
    try:
        return kind(message)
    except Exception:  # noqa: BLE001 - not constructible from a message alone
        return None
