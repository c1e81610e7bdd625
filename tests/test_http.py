"""The HTTP API beside gRPC, tested with the ecosystems' own clients: the `openai` package
and huggingface_hub's InferenceClient (text-embeddings-inference's), against a real server
on 127.0.0.1 that serves gRPC and HTTP from one process and one engine."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
from conftest import ServerThread
from workload import at_once

from embedsense.client import Client
from embedsense.model import TextRole
from embedsense.server.config import EngineConfig

TEXTS = ["我喜欢吃苹果", "我买了最新的苹果手机", "香蕉和苹果都是水果"]
MODEL = "multilingual-e5-small"
KEY = "http-secret"


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("http"), http_port=0, api_key=KEY,
                          metrics_port=0, http_body_timeout_s=1.0)  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def base(running):
    return f"http://127.0.0.1:{running.server.http_port}"


@pytest.fixture(scope="module")
def grpc_vectors(running):
    with Client(running.target, api_key=KEY) as c:
        return c.encode(TEXTS)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def call(base: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:  # fmt: skip
    request = urllib.request.Request(base + path, data=body, method=method, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {}),
    })  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_openai_client_gets_the_grpc_vectors(base, grpc_vectors):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    listed = client.embeddings.create(input=TEXTS, model=MODEL)  # base64 on the wire
    got = np.array([d.embedding for d in sorted(listed.data, key=lambda d: d.index)])
    assert (cosines(got, grpc_vectors) >= 0.9999).all()
    one = client.embeddings.create(input=TEXTS[0], model=MODEL, encoding_format="float")
    assert cosines(np.array(one.data[0].embedding), grpc_vectors[0]) >= 0.9999
    assert one.usage.prompt_tokens == one.usage.total_tokens > 4
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_openai_client_gets_openai_errors(base, running):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).embeddings.create(
            input="苹果", model=MODEL
        )
    with pytest.raises(openai.BadRequestError, match="606 tokens.*--auto-truncate"):
        client.embeddings.create(input="苹果" * 600, model=MODEL)  # said no way out
    with pytest.raises(openai.BadRequestError, match="the limit is 2048"):
        client.embeddings.create(input=["苹果"] * 2049, model=MODEL)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(input="苹果", model=MODEL, dimensions=128)
    with pytest.raises(openai.NotFoundError, match=MODEL):
        client.embeddings.create(input="苹果", model="text-embedding-3-small")


def test_token_ids_are_the_served_tokenizers(base, running, e5, grpc_vectors):
    seen = e5.tokenizer.encode(TEXTS[0], TextRole.QUERY)  # what gRPC Embed embedded
    ids = [i for i, real in zip(seen.ids, seen.from_text, strict=True) if real]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    got = client.embeddings.create(input=[ids], model=MODEL, encoding_format="float")
    assert cosines(np.array(got.data[0].embedding), grpc_vectors[0]) >= 0.9999
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.embeddings.create(input=[10**9], model=MODEL)
    # The item at fault, named: it said "got a list of other things".
    with pytest.raises(openai.BadRequestError, match=r"item \[0\]\[1\] is -1, not a token") as bad:
        client.embeddings.create(input=[[ids[0], -1]], model=MODEL)
    assert bad.value.param == "input"
    with pytest.raises(openai.BadRequestError, match=r"item \[1\] is true"):
        client.embeddings.create(input=["苹果", True], model=MODEL)
    with pytest.raises(openai.BadRequestError, match="token ids and lists of them mixed"):
        client.embeddings.create(input=[[ids[0]], ids[0]], model=MODEL)


def test_an_overloaded_engine_is_openais_rate_limit_with_retry_after(e5, tmp_path):
    config = EngineConfig(dtype="float32", max_queued_tokens=600)
    busy = ServerThread(e5, tmp_path, http_port=0, engine=config)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{busy.server.http_port}/v1",
                               api_key="none", max_retries=0)  # fmt: skip
        answers = at_once(lambda: client.embeddings.create(input=["苹果 " * 100] * 2, model=MODEL))
        limited = [a for a in answers if isinstance(a, openai.RateLimitError)]
        assert limited and all(a.response.headers["retry-after"] == "1" for a in limited)
    finally:
        busy.stop()


def test_tei_client_gets_the_grpc_vectors(base, grpc_vectors, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    # The suite keeps the hub offline; this client talks to 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=base, api_key=KEY)
    one = client.feature_extraction(TEXTS[1])
    assert one.shape == (1, 384) and cosines(one[0], grpc_vectors[1]) >= 0.9999
    status, _, body = call(base, "POST", "/embed", json.dumps({"inputs": TEXTS}).encode())
    assert status == 200 and (cosines(np.array(json.loads(body)), grpc_vectors) >= 0.9999).all()


def test_tei_sentence_similarity_with_its_client_and_its_route(base, grpc_vectors, monkeypatch):
    """huggingface_hub's sentence_similarity posts {"inputs": {source_sentence, sentences}}
    to /, which answered 422 (inputs: expected a string); TEI's /similarity was 404."""
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=base, api_key=KEY)
    expected = [float(cosines(grpc_vectors[0], v)) for v in grpc_vectors[1:]]
    assert client.sentence_similarity(TEXTS[0], TEXTS[1:]) == pytest.approx(expected, abs=1e-4)
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]},
            "parameters": {"prompt_name": "query"}}  # fmt: skip
    status, _, answer = call(base, "POST", "/similarity", json.dumps(body).encode())
    assert status == 200 and json.loads(answer) == pytest.approx(expected, abs=1e-4)
    # TEI's statuses and shapes, the field at fault named as it was sent.
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": []}}
    status, _, answer = call(base, "POST", "/", json.dumps(body).encode())
    assert status == 400 and json.loads(answer)["error_type"] == "Empty"
    assert json.loads(answer)["error"].startswith("inputs.sentences: "), answer
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": "苹果"}}
    status, _, answer = call(base, "POST", "/", json.dumps(body).encode())
    assert status == 422 and json.loads(answer)["error"].startswith("inputs.sentences: "), answer
    body = {"inputs": {"source_sentence": "苹果" * 600, "sentences": ["x"]}}
    status, _, answer = call(base, "POST", "/similarity", json.dumps(body).encode())
    assert status == 413 and "inputs.source_sentence is " in answer.decode(), answer
    body = {"inputs": {"source_sentence": "x", "sentences": ["y", "苹果" * 600]}}
    status, _, answer = call(base, "POST", "/similarity", json.dumps(body).encode())
    assert status == 413 and "inputs.sentences[1] is " in answer.decode(), answer


def test_tei_routes_and_errors(base, running):
    status, _, body = call(
        base, "POST", "/tokenize", b'{"inputs": "\\u6211\\u559c\\u6b22\\u5403\\u82f9\\u679c"}'
    )
    tokens = json.loads(body)[0]
    assert status == 200 and "苹果" in [t["text"] for t in tokens]
    apple = next(t for t in tokens if t["text"] == "苹果")
    assert (apple["start"], apple["stop"], apple["special"]) == (4, 6, False)
    status, _, body = call(base, "GET", "/info")
    info = json.loads(body)
    assert status == 200 and info["model_id"] == MODEL and info["max_input_length"] == 512
    too_long = json.dumps({"inputs": "苹果" * 600}).encode()
    status, _, body = call(base, "POST", "/embed", too_long)
    assert status == 413 and json.loads(body)["error_type"] == "Validation"
    assert "truncate" in json.loads(body)["error"]
    cut = json.dumps({"inputs": "苹果" * 600, "truncate": True}).encode()
    status, _, body = call(base, "POST", "/embed", cut)
    assert status == 200 and len(json.loads(body)[0]) == 384
    assert call(base, "GET", "/health", headers={"Authorization": ""})[0] == 200  # open


def test_hostile_http_gets_clean_4xx_and_the_server_goes_on(base, running):
    cases = [
        ("POST", "/v1/embeddings", b"{not json", 400),
        ("POST", "/v1/embeddings", b'{"input": 3}', 400),
        ("POST", "/v1/embeddings", b'{"input": "x", "model": "x"}', 404),
        ("POST", "/v1/embeddings", b'{"input": [1, "a"]}', 400),
        ("POST", "/v1/embeddings", b'{"input": []}', 400),
        ("POST", "/v1/embeddings", b'{"input": "\\u0000"}', 400),
        ("POST", "/v1/embeddings", b"[]", 400),
        ("POST", "/embed", b'{"inputs": {"a": 1}}', 422),
        ("POST", "/embed", b'{"inputs": "x", "normalize": "yes"}', 422),
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/nothing-here", None, 404),
        ("GET", "/embed", None, 405),
    ]
    for method, path, body, expected in cases:
        status, headers, answer = call(base, method, path, body)
        assert status == expected, (path, body, answer)
        assert json.loads(answer) and headers["x-request-id"]
    status, _, answer = call(base, "POST", "/v1/embeddings", b" " * (65 * 1024 * 1024))
    assert status == 413
    assert call(base, "POST", "/embed", b'{"inputs": "x"}', {"Authorization": ""})[0] == 401
    # A body that trickles in: refused when the server's body timeout (1 s here) passes.
    port = running.server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n{")  # fmt: skip
        started = time.monotonic()
        reply = slow.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
        # Said to be closed (RFC 9110 15.5.9): the rest of the body may still come, so a
        # client that sent its next request on the connection got no answer to it.
        assert b"connection: close" in reply.lower(), reply
    status, _, body = call(base, "POST", "/embed", b'{"inputs": "still serving"}')
    assert status == 200 and len(json.loads(body)[0]) == 384


def test_http_requests_are_logged_counted_and_traced(base, running):
    status, headers, _ = call(base, "GET", "/info", headers={"x-request-id": "trace-http-7"})
    assert status == 200 and headers["x-request-id"] == "trace-http-7"
    connection = http.client.HTTPConnection("127.0.0.1", running.server.metrics_port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    assert 'embedsense_requests_total{code="200",rpc="HTTP GET /info"}' in text
    assert 'embedsense_requests_total{code="401",rpc="HTTP POST /embed"}' in text


def test_the_x_priority_header_sets_an_embeds_priority(base, running):
    stats = running.server.engine.stats
    before = dict(stats.rows_by_priority)
    body = json.dumps({"input": TEXTS, "model": MODEL}).encode()
    status, _, _ = call(base, "POST", "/v1/embeddings", body, {"X-Priority": "Bulk"})
    assert status == 200 and stats.rows_by_priority["bulk"] - before["bulk"] == 3
    status, _, _ = call(
        base, "POST", "/embed", json.dumps({"inputs": "苹果"}).encode(), {"X-Priority": "query"}
    )
    assert status == 200 and stats.rows_by_priority["query"] - before["query"] == 1
    status, _, _ = call(base, "POST", "/embed", json.dumps({"inputs": "苹果"}).encode())
    assert status == 200 and stats.rows_by_priority["interactive"] > before["interactive"]
    status, _, reply = call(base, "POST", "/v1/embeddings", body, {"X-Priority": "urgent"})
    assert status == 400 and b"X-Priority: 'urgent'; expected one of query, interactive" in reply
    # TEI answers a bad body 413 (its way); a bad header is no body too large: 400.
    for route in ("/embed", "/embed_all", "/"):
        tei = json.dumps({"inputs": "苹果"}).encode()
        status, _, reply = call(base, "POST", route, tei, {"X-Priority": "nope"})
        assert status == 400, (route, status)
        assert json.loads(reply)["error_type"] == "Validation", reply
    operation = json.loads(call(base, "GET", "/openapi.json")[2])["paths"]["/v1/embeddings"]
    parameter = operation["post"]["parameters"][0]
    assert parameter["name"] == "X-Priority" and parameter["in"] == "header"


def test_without_cors_only_the_servers_own_pages_may_write(base):
    """No --cors-allow-origin: a POST from any other site's page is refused (a text/plain
    one comes with no preflight); the server's own origin, and no Origin at all, go on."""
    body = json.dumps({"input": "苹果", "model": MODEL}).encode()
    elsewhere = {"Origin": "http://localhost:8080", "Content-Type": "text/plain"}
    status, _, answer = call(base, "POST", "/v1/embeddings", body, elsewhere)
    assert status == 403 and json.loads(answer)["error"]["code"] == "forbidden", answer
    for fine in ({"Origin": base}, {"Origin": base.upper()}, {}):
        status, _, answer = call(base, "POST", "/v1/embeddings", body, fine)
        assert status == 200, (fine, answer[:200])


def test_the_start_log_names_each_port_with_its_address(e5, tmp_path, caplog):
    """They read ":8080": every address, where the ports listen on --host's alone."""
    caplog.set_level(logging.INFO, logger="embedsense")
    server = ServerThread(e5, tmp_path, http_port=0, metrics_port=0)
    try:
        serving = next(r.getMessage() for r in caplog.records if r.msg.startswith("serving"))
        http_port, metrics_port = server.server.http_port, server.server.metrics_port
        assert f"HTTP on 127.0.0.1:{http_port}" in serving, serving
        assert f"metrics on 127.0.0.1:{metrics_port}" in serving, serving
    finally:
        server.stop()
