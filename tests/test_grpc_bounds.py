"""gRPC replies held to max_message_bytes by the server, in words: a Get, Scroll, Search or
SearchBatch reply over the limit, and an Embed whose token vectors fill it, failed in gRPC
core ("Sent message larger than max", no word of what to ask less of), counted as OK in the
metrics, with an ERROR traceback in the log per call."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import ServerThread

from embedsense.client import Client, InvalidArgument, ResourceExhausted
from embedsense.proto.tensors import to_tensor
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.v1 import embedsense_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def small_replies(e5, tmp_path_factory):
    running = ServerThread(e5, tmp_path_factory.mktemp("grpc-bounds"), max_message_bytes=200_000)
    yield running
    running.stop()


def _refused(call, *words: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    message = refused.value.details()
    assert "larger than max" not in message, message
    for word in ("max_message_bytes", "200,000", *words):
        assert word in message, message


def test_collection_replies_over_the_limit_say_what_to_ask_less_of(small_replies):
    dim = 16
    vectors = np.random.default_rng(5).standard_normal((8, dim)).astype(np.float32)
    with Client(small_replies.target, timeout=60) as client:
        client.create_collection("big", dim=dim)
        client.upsert("big", [{"id": f"d{i}", "text": "苹" * 15_000} for i in range(8)],
                      vectors=vectors, batch_size=2)  # 45 kB of UTF-8 each  # fmt: skip
    channel = grpc.insecure_channel(small_replies.target)
    stub = pb_grpc.EmbedSenseStub(channel)
    query = to_tensor(vectors[0])
    try:
        _refused(lambda: stub.Get(pb.GetRequest(collection="big", ids=[f"d{i}" for i in range(8)])),
                 "ids")  # fmt: skip
        _refused(lambda: stub.Scroll(pb.ScrollRequest(collection="big", limit=8)), "limit")
        _refused(lambda: stub.Search(pb.SearchRequest(collection="big", vector=query, k=8)), "k")
        _refused(lambda: stub.SearchBatch(pb.SearchBatchRequest(
            collection="big", vectors=to_tensor(vectors[:2]), k=8)), "k")  # fmt: skip
        # Within the limit, answered as before; the server serves on.
        assert len(stub.Get(pb.GetRequest(collection="big", ids=["d0", "d1"])).documents) == 2
        assert len(stub.Search(pb.SearchRequest(collection="big", vector=query, k=3)).hits) == 3
    finally:
        channel.close()


def test_token_vectors_that_would_fill_the_reply_are_refused_before_the_work(small_replies):
    """The bound counted 4 x dim bytes a token, not the token's text, id and offsets: a text
    just under it was embedded, then its reply was over the limit."""
    with Client(small_replies.target, timeout=60) as client:
        dim = client.info().dim
        fits = 200_000 // (4 * dim)  # what the old bound let through
        texts = (" ".join(["苹果"] * words) + end
                 for words in range(fits, 0, -1) for end in ("", "。", " 的", "的。"))  # fmt: skip
        text = next(t for t in texts if len(client.tokenize(t).tokens) == fits)
        with pytest.raises((ResourceExhausted, InvalidArgument)) as refused:
            client.embed_tokens(text)
        assert "larger than max" not in str(refused.value), refused.value
        assert "token vector" in str(refused.value), refused.value
        assert len(client.embed_tokens("我喜欢吃苹果").vectors) > 0
