"""Small requests tokenized together, off the event loop (server/tokenize_batch.py): the same
results as one at a time on the loop, one caller's bad input failing only that caller, and
the tokenizer really called from a thread, for Embed and for the Tokenize RPC."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from workload import chinese_texts

from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine, InvalidRequest
from embedsense.server.tokenize_batch import MicroBatcher


@pytest.fixture(scope="module")
def engines(e5):
    grouped = Engine(EngineConfig(dtype="float32", tokenize_batch=True), e5).start()
    inline = Engine(EngineConfig(dtype="float32", tokenize_batch=False), e5).start()
    yield grouped, inline
    grouped.close()
    inline.close()


class TokenizerSpy:
    """Wraps the model's tokenizer.encode_batch: the thread and the size of every call."""

    def __init__(self, tokenizer, monkeypatch) -> None:
        self.calls: list[tuple[int, int]] = []
        real = tokenizer.encode_batch

        def spy(texts, *args, **kwargs):
            self.calls.append((threading.get_ident(), len(texts)))
            return real(texts, *args, **kwargs)

        monkeypatch.setattr(tokenizer, "encode_batch", spy)


REQUESTS = [
    (chinese_texts(1, seed=1), {}),
    (chinese_texts(3, seed=2), {}),
    (["苹果" * 700], {"truncate": True}),  # over 512 tokens: cut
    (["苹果" * 700, "香蕉"], {"windowed": True}),  # over 512 tokens: in windows
    (["我喜欢吃苹果"], {"token_vectors": True, "layers": [-1, -2]}),
    (chinese_texts(2, seed=3), {"role": "query"}),
]


async def _all(engine: Engine) -> list:
    return await asyncio.gather(*(engine.embed(texts, **options) for texts, options in REQUESTS))


def test_grouped_tokenizing_gives_what_one_at_a_time_on_the_loop_gives(engines):
    grouped, inline = engines
    got, expected = asyncio.run(_all(grouped)), asyncio.run(_all(inline))
    for mine, theirs in zip(got, expected, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert a.tokenized == b.tokenized and a.windows == b.windows
            np.testing.assert_allclose(a.sentence, b.sentence, atol=1e-5)
            if b.token_vectors is not None:
                np.testing.assert_allclose(a.token_vectors, b.token_vectors, atol=1e-5)


def test_one_callers_long_text_fails_that_caller_alone_with_the_same_error(engines):
    grouped, inline = engines
    bad = ["短句", "苹果" * 700]

    async def run(engine: Engine) -> list:
        calls = [engine.embed(chinese_texts(2, seed=s)) for s in range(4)]
        return await asyncio.gather(*calls, engine.embed(bad), return_exceptions=True)

    got, expected = asyncio.run(run(grouped)), asyncio.run(run(inline))
    assert all(isinstance(r, list) and len(r) == 2 for r in got[:4])
    assert isinstance(got[4], InvalidRequest) and isinstance(expected[4], InvalidRequest)
    assert str(got[4]) == str(expected[4]) and str(got[4]).startswith("text 1 is ")


def test_concurrent_small_requests_are_tokenized_together_off_the_loop(engines, monkeypatch):
    grouped, _ = engines
    spy = TokenizerSpy(grouped.model.tokenizer, monkeypatch)
    texts = chinese_texts(32, seed=5)

    async def run() -> int:
        await asyncio.gather(*(grouped.embed([t]) for t in texts))
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert sum(size for _, size in spy.calls) == len(texts)
    assert len(spy.calls) < len(texts) / 2, spy.calls  # grouped, not one call per request
    assert all(thread != loop_thread for thread, _ in spy.calls)


def test_auto_tokenizes_on_the_loop_on_a_cpu_where_the_model_owns_the_cores(e5, monkeypatch):
    engine = Engine(EngineConfig(dtype="float32"), e5).start()  # tokenize_batch: auto
    spy = TokenizerSpy(e5.tokenizer, monkeypatch)

    async def run() -> int:
        await asyncio.gather(*(engine.embed([t]) for t in chinese_texts(8, seed=9)))
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(run())
    finally:
        engine.close()
    assert [thread for thread, _ in spy.calls] == [loop_thread] * 8


def test_the_tokenize_rpc_runs_off_the_event_loop(server, client, monkeypatch):
    spy = TokenizerSpy(server.server.engine.model.tokenizer, monkeypatch)
    tokens = client.tokenize("我喜欢吃苹果")
    assert "苹果" in tokens.tokens
    assert spy.calls and all(thread != server.thread.ident for thread, _ in spy.calls)


def test_the_tokenize_rpc_groups_concurrent_callers_and_keeps_each_ones_answer(server, e5):
    from embedsense.client import AsyncClient

    texts = chinese_texts(24, seed=7)

    async def run() -> list:
        async with AsyncClient(server.target, timeout=60) as c:
            return await asyncio.gather(*(c.tokenize(t) for t in texts))

    for text, got in zip(texts, asyncio.run(run()), strict=True):
        (expected,) = e5.tokenizer.encode_batch([text], "query", allow_long=True)
        assert got.tokens == expected.tokens and got.ids == expected.ids


def test_a_caller_gone_while_its_group_is_tokenized_is_skipped_and_the_rest_answered():
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    def work(key, items):
        release.wait(10)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    async def run():
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(work, pool, 1)
            tasks = [asyncio.create_task(batcher.submit("k", i)) for i in (1, 2, -3)]
            await asyncio.sleep(0.05)  # the group is in the thread now
            tasks[0].cancel()
            release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, errors

    (first, second, third), errors = asyncio.run(run())
    assert isinstance(first, asyncio.CancelledError) and second == 20
    assert isinstance(third, ValueError) and str(third) == "bad -3" and not errors


def test_groups_grow_while_the_threads_are_busy():
    from concurrent.futures import ThreadPoolExecutor

    sizes = []

    def work(key, items):
        sizes.append(len(items))
        time.sleep(0.05)
        return items

    async def run():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(work, pool, 1)
            first = asyncio.create_task(batcher.submit("k", 0))
            await asyncio.sleep(0.01)  # the first group is out
            rest = [batcher.submit("k", i) for i in range(1, 9)]
            return [await first, *await asyncio.gather(*rest)]

    assert asyncio.run(run()) == list(range(9))
    assert sizes == [1, 8]


def test_tokenizing_on_a_closed_engine_says_it_is_closed(e5):
    from embedsense.server.engine import EngineClosed

    engine = Engine(EngineConfig(dtype="float32", tokenize_batch=True, warmup=False), e5).start()
    engine.close()
    with pytest.raises(EngineClosed):
        asyncio.run(engine.tokenize(["我喜欢吃苹果"]))
    with pytest.raises(EngineClosed):
        asyncio.run(engine.embed(["我喜欢吃苹果"]))
