"""Hostile HTTP: requests that once got a 500 (or the wrong 4xx), each answered in its own
API's error shape with a request id, and the server going on. Each test names the case the
hostile trial found."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib

import pytest
from conftest import ServerThread

KEY = "hostile-secret"
SURROGATE = b'"a\\ud800b"'  # valid JSON, but no Unicode text: a lone UTF-16 surrogate


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("hostile"), http_port=0, api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def base(running):
    return f"http://127.0.0.1:{running.server.http_port}"


def call(
    base: str,
    path: str,
    body: bytes | None,
    headers: dict | None = None,
    method: str = "POST",
    timeout: float = 120,
) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        base + path,
        data=body,
        method=method,
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def openai_error(status: int, headers: dict, answer: bytes) -> dict:
    """The body of an OpenAI-shaped error, checked for its shape and the request id."""
    assert headers.get("x-request-id"), headers
    error = json.loads(answer)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def tei_error(headers: dict, answer: bytes) -> dict:
    assert headers.get("x-request-id"), headers
    error = json.loads(answer)
    assert set(error) == {"error", "error_type"}, error
    return error


def still_serving(base: str) -> None:
    status, _, body = call(base, "/embed", b'{"inputs": "still serving"}')
    assert status == 200 and len(json.loads(body)[0]) == 384


@pytest.mark.parametrize(
    "path, field",
    [("/v1/embeddings", "input"), ("/embed", "inputs"), ("/", "inputs"), ("/tokenize", "inputs")],
)
def test_a_lone_surrogate_escape_is_a_400_not_a_500(base, path, field):
    status, headers, answer = call(base, path, b'{"%s": %s}' % (field.encode(), SURROGATE))
    assert status == 400, answer
    if path.startswith("/v1"):
        assert "surrogate" in openai_error(status, headers, answer)["message"]
    else:
        assert "surrogate" in tei_error(headers, answer)["error"]
    still_serving(base)


def test_a_body_that_is_not_utf8_is_named_so_not_a_surrogate(base):
    """orjson reports any invalid UTF-8 as "surrogates not allowed"; the error said the body
    held a lone surrogate escape, which it did not."""
    status, headers, answer = call(base, "/v1/embeddings", b'{"input": "caf\xe9"}')
    message = openai_error(status, headers, answer)["message"]
    assert status == 400 and "not UTF-8" in message and "0xe9" in message, message
    assert "surrogate" not in message
    still_serving(base)


def test_an_over_long_text_is_too_long_however_texts_are_tokenized(e5, tmp_path):
    """With tokenize_batch (several requests' texts tokenized together; the default on a GPU)
    an over-long text was a plain invalid argument with gRPC's long_text hint, not the
    route's own too-long error."""
    from embedsense.server.config import EngineConfig

    server = ServerThread(e5, tmp_path, http_port=0, api_key=KEY,
                          engine=EngineConfig(tokenize_batch=True))  # fmt: skip
    try:
        base = f"http://127.0.0.1:{server.server.http_port}"
        long_text = json.dumps("苹果" * 600).encode()
        status, headers, answer = call(base, "/embed", b'{"inputs": %s}' % long_text)
        error = tei_error(headers, answer)
        assert status == 413 and error["error_type"] == "Validation", answer
        assert "truncate" in error["error"] and "long_text" not in error["error"]
        status, headers, answer = call(base, "/v1/embeddings", b'{"input": %s}' % long_text)
        error = openai_error(status, headers, answer)
        assert status == 400 and error["code"] == "context_length_exceeded", error
        assert "long_text" not in error["message"], error
    finally:
        server.stop()


def test_a_corrupt_gzip_body_is_a_400_not_a_500(base):
    status, headers, answer = call(
        base,
        "/v1/embeddings",
        b"\x1f\x8b\x08\x00 this is not gzip at all",
        {"Content-Encoding": "gzip"},
    )
    assert status == 400, answer
    assert "gzip" in openai_error(status, headers, answer)["message"]
    # A well-formed gzip body is read as what it holds.
    good = gzip.compress(b'{"input": "\\u82f9\\u679c"}')
    status, _, answer = call(base, "/v1/embeddings", good, {"Content-Encoding": "gzip"})
    assert status == 200 and len(json.loads(answer)["data"][0]["embedding"]) == 384


def test_a_gzip_bomb_is_a_413_before_it_inflates(base):
    """50 MB of JSON in 50 kB of gzip: the size limit applies to what it inflates to."""
    bomb = gzip.compress(b'{"inputs": "' + b"a" * 50_000_000 + b'"}', 9)
    status, headers, answer = call(base, "/embed", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "http_max_body_bytes" in tei_error(headers, answer)["error"]
    still_serving(base)


def test_input_type_as_a_list_is_a_400_naming_the_param(base):
    body = b'{"input": "x", "input_type": ["query"]}'
    status, headers, answer = call(base, "/v1/embeddings", body)
    assert status == 400, answer
    assert openai_error(status, headers, answer)["param"] == "input_type"


def test_prompt_name_as_an_object_is_a_422(base):
    status, headers, answer = call(base, "/embed", b'{"inputs": "x", "prompt_name": {"a": 1}}')
    assert status == 422, answer
    assert "prompt_name" in tei_error(headers, answer)["error"]


@pytest.mark.parametrize("path, field", [("/v1/embeddings", "input"), ("/embed", "inputs")])
def test_200000_nested_brackets_are_a_400_not_a_500(base, path, field):
    body = b'{"%s": ' % field.encode() + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, headers, answer = call(base, path, body)
    assert status == 400, answer[:300]
    assert headers.get("x-request-id")
    still_serving(base)


def test_an_authorization_header_of_invalid_utf8_is_a_json_401_with_a_request_id(running):
    port = running.server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        body = b'{"input": "x"}'
        raw.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer \xff\xfe\xc3\x28\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), reply[:300]
    assert b"x-request-id:" in head.lower() and b"www-authenticate: bearer" in head.lower()
    assert json.loads(answer)["error"]["code"] == "invalid_api_key"


def test_model_as_a_list_is_a_400_not_a_404(base):
    status, headers, answer = call(base, "/v1/embeddings", b'{"input": "x", "model": ["a"]}')
    assert status == 400, answer
    assert openai_error(status, headers, answer)["param"] == "model"


def test_tokenize_refuses_a_text_over_the_grpc_limit(base):
    body = json.dumps({"inputs": "a" * 450_000}).encode()
    status, headers, answer = call(base, "/tokenize", body)
    assert status == 413 and len(answer) < 10_000, (status, len(answer))
    assert "max_text_chars" in tei_error(headers, answer)["error"]


def test_tokenize_refuses_more_inputs_than_the_grpc_limit(base):
    status, headers, answer = call(base, "/tokenize", json.dumps({"inputs": ["a"] * 5000}).encode())
    assert status == 413, answer[:300]
    assert "max_texts_per_request" in tei_error(headers, answer)["error"]


def test_tokenize_runs_off_the_event_loop(base):
    """A large tokenize, within the limits, leaves health answering promptly meanwhile."""
    body = json.dumps({"inputs": ["我喜欢吃苹果。" * 14_000] * 2}).encode()  # 196,000 characters
    done: list[float] = []

    def big() -> None:
        started = time.monotonic()
        status, _, _ = call(base, "/tokenize", body)
        assert status == 200
        done.append(time.monotonic() - started)

    worker = threading.Thread(target=big)
    worker.start()
    waits = []
    while worker.is_alive():
        started = time.monotonic()
        assert call(base, "/health", None, method="GET")[0] == 200
        waits.append(time.monotonic() - started)
        time.sleep(0.01)
    worker.join()
    assert done, "the tokenize request failed"
    # On the loop, the first health call waited the whole tokenize and was the only one.
    # Off it, health answers again and again meanwhile, most calls at once. (Not the
    # longest wait: on two cores the tokenizer's threads may hold the CPU for a while, and
    # one wait of 0.74 s in a 1.5 s tokenize failed a bound on it with the loop free.)
    assert len(waits) >= 5, (waits, done[0])
    assert sorted(waits)[len(waits) // 2] < 0.1, (waits, done[0])


def raw_call(port: int, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """A request sent as written (urllib cannot repeat a header): the reply's head and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, answer = reply.partition(b"\r\n\r\n")
    return head, answer


@pytest.mark.parametrize("coding", ["br", "zstd", "foo", "gzip, br", "gzip, gzip"])
@pytest.mark.parametrize(
    "path, field",
    [("/v1/embeddings", "input"), ("/embed", "inputs"), ("/v1/collections/none/search", "text")],
)
def test_a_content_encoding_it_does_not_decode_is_a_415_naming_those_it_does(
    base, path, field, coding
):
    """br and zstd were aiohttp's own text/plain 400 ("Please install Brotli"), with no
    request id; an unknown coding (or a list of them) was read as if it were no coding."""
    body = b'{"%s": "x"}' % field.encode()
    status, headers, answer = call(base, path, body, {"Content-Encoding": coding})
    assert status == 415, answer
    assert headers.get("Accept-Encoding") == "gzip, deflate", headers
    if path == "/embed":
        error = tei_error(headers, answer)
        assert error["error_type"] == "Validation", error  # the client's, not "Backend"
        message = error["error"]
    elif path == "/v1/embeddings":
        message = openai_error(status, headers, answer)["message"]
    else:
        assert headers.get("x-request-id"), headers
        error = json.loads(answer)["error"]
        assert error["code"] == "unsupported_media_type", error
        message = error["message"]
    assert coding in message and "gzip, deflate" in message, message
    still_serving(base)


@pytest.mark.parametrize(
    "coding, encode",
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some clients send
        ("identity", bytes),
        ("GZip, identity", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:9]) + gzip.compress(data[9:])),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw-deflate", "identity", "gzip-identity", "two-members"],
)
def test_a_content_encoding_it_decodes_is_read_as_what_it_holds(base, coding, encode):
    body = encode(b'{"inputs": "\\u82f9\\u679c"}')
    status, _, answer = call(base, "/embed", body, {"Content-Encoding": coding})
    assert status == 200 and len(json.loads(answer)[0]) == 384, answer


GZIPPED = gzip.compress(b'{"input": "' + b"a" * 1000 + b'"}')


@pytest.mark.parametrize(
    "body", [GZIPPED[:-20], GZIPPED + b"more"], ids=["cut-short", "bytes-after-its-end"]
)
def test_a_gzip_body_cut_short_or_with_bytes_after_it_is_a_400(base, body):
    status, headers, answer = call(base, "/v1/embeddings", body, {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in openai_error(status, headers, answer)["message"]


def test_a_request_that_does_not_parse_is_a_400_and_no_error_in_the_log(running, caplog):
    """aiohttp refuses a repeated Content-Type while parsing, before any route: its 400 is
    right, but it logged each one at ERROR with a traceback, a false alarm."""
    port = running.server.http_port
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Type: application/json\r\n" % KEY.encode()
    )
    with caplog.at_level(logging.INFO):
        head, answer = raw_call(port, head, b'{"input": "x"}')
    assert head.split(b" ")[1] == b"400" and b"Content-Type" in answer, (head, answer)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    still_serving(f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("path", ["/health", "/info", "/v1/models", "/openapi.json", "/metrics"])
def test_head_is_answered_wherever_get_is(base, path):
    """RFC 9110 9.1: a general-purpose server supports HEAD. It was 405 (Allow: GET)."""
    get_status, get_headers, _ = call(base, path, None, method="GET")
    status, headers, body = call(base, path, None, method="HEAD")
    assert (status, body) == (get_status, b""), (status, body)
    assert headers.get("Content-Type") == get_headers.get("Content-Type")


def test_a_token_id_outside_the_vocabulary_is_named_by_its_field_and_place(base):
    """The tokenizer named it "input 1", with param null, whatever the field was called."""
    status, headers, answer = call(base, "/v1/embeddings", b'{"input": [[5], [300000]]}')
    error = openai_error(status, headers, answer)
    assert status == 400 and error["param"] == "input", error
    assert error["message"].startswith("input[1]: token id 300000 is not in the vocabulary")
    status, headers, answer = call(base, "/decode", b'{"ids": [[1], [300000]]}')
    assert tei_error(headers, answer)["error"].startswith("ids[1]: token id 300000"), answer
    still_serving(base)


def test_a_whole_number_written_with_a_point_is_an_integer(base):
    """JSON Schema counts 5.0 as an integer, and the OpenAPI document says "integer": such a
    k, limit, dim or dimensions was 422, such token ids 400."""
    ints = b'{"input": [[100, 200]], "model": "multilingual-e5-small"}'
    floats = b'{"input": [[100.0, 200.0]], "model": "multilingual-e5-small"}'
    (status, _, by_ints), (status_f, _, by_floats) = (
        call(base, "/v1/embeddings", body) for body in (ints, floats)
    )
    assert status == status_f == 200, by_floats
    assert json.loads(by_floats)["data"] == json.loads(by_ints)["data"]
    assert call(base, "/embed", b'{"inputs": "x", "dimensions": 384.0}')[0] == 200
    assert call(base, "/v1/collections", b'{"name": "whole", "dim": 4.0}')[0] == 200
    try:
        vector = b'{"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]}'
        assert call(base, "/v1/collections/whole/upsert", vector)[0] == 200
        status, _, answer = call(base, "/v1/collections/whole/search",
                                 b'{"vector": [1, 0, 0, 0], "k": 5.0}')  # fmt: skip
        assert status == 200 and json.loads(answer)["results"][0][0]["id"] == "a", answer
        status, _, answer = call(base, "/v1/collections/whole/scroll", b'{"limit": 10.0}')
        assert status == 200 and len(json.loads(answer)["documents"]) == 1, answer
        for fraction in (b'{"vector": [1, 0, 0, 0], "k": 5.5}', b'{"query": "x", "k": true}'):
            assert call(base, "/v1/collections/whole/search", fraction)[0] == 422
    finally:
        call(base, "/v1/collections/whole", None, method="DELETE")


def test_null_where_the_document_has_no_null_is_refused_naming_the_field(base, running):
    """The OpenAPI document gives a search's query and vector, and a new document's vector,
    no null branch (one of the two is required, given as a value), yet "vector": null beside
    a query was taken as if left out. Leaving the field out still works."""
    assert call(base, "/v1/collections", b'{"name": "nulls"}')[0] == 200
    try:
        for path, body, field in (
            ("search", b'{"query": "x", "vector": null}', "vector"),
            ("search", b'{"query": null, "vector": [0.1]}', "query"),
            ("upsert", b'{"documents": [{"text": "x", "vector": null}]}', "documents.0.vector"),
        ):
            status, _, answer = call(base, f"/v1/collections/nulls/{path}", body)
            error = json.loads(answer)["error"]
            assert status == 422 and error["message"].startswith(f"{field}: "), answer
            assert "null" in error["message"] and "leave it out" in error["message"], answer
        status, _, answer = call(
            base, "/v1/collections/nulls/upsert", b'{"documents": [{"text": "x"}]}'
        )
        assert status == 200, answer
        status, _, answer = call(base, "/v1/collections/nulls/search", b'{"query": "x"}')
        assert status == 200 and json.loads(answer)["results"][0][0]["text"] == "x", answer
    finally:
        call(base, "/v1/collections/nulls", None, method="DELETE")
    still_serving(base)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_vector_whose_distances_overflow_float32_is_refused(base, metric):
    """[1e30, ...] is finite, but its distances are not in float32: stored, it made a search
    of 3 documents answer 1 hit for k=3 (l2), or a hit whose score was null (ip)."""
    name = f"huge-{metric}"

    def post(path: str, body: dict) -> tuple[int, dict]:
        status, _, answer = call(base, f"/v1/collections{path}", json.dumps(body).encode())
        return status, json.loads(answer)

    assert post("", {"name": name, "dim": 4, "metric": metric})[0] == 200
    try:
        huge = {"id": "a", "vector": [1e30] * 4}
        status, answer = post(
            f"/{name}/upsert", {"documents": [{"id": "b", "vector": [1, 0, 0, 0]}, huge]}
        )
        message = answer["error"]["message"]
        assert status == 400 and "document 'a'" in message and "overflow float32" in message
        status, answer = post(f"/{name}/search", {"vector": [-1e30, 0, 0, 0]})
        assert status == 400 and answer["error"]["param"] == "vector", answer
        # Large yet safe lengths are kept, and every hit has a number for its score.
        big = [{"id": i, "vector": [v, 0, 0, 0]} for i, v in (("p", 1e18), ("n", -1e18), ("u", 1))]
        assert post(f"/{name}/upsert", {"documents": big})[0] == 200
        status, answer = post(f"/{name}/search", {"vector": [1e18, 0, 0, 0], "k": 3})
        hits = answer["results"][0]
        assert status == 200 and len(hits) == 3, answer
        assert all(isinstance(hit["score"], float) for hit in hits), answer
    finally:
        call(base, f"/v1/collections/{name}", None, method="DELETE")
    still_serving(base)
