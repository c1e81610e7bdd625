"""Hardening, through the real server: bad input, auth on every RPC, TLS and mutual TLS,
metrics and request ids, failing fast at start, a second signal, and fuzzing every RPC."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops.serverproc import free_port

from embedsense.client import TLS, Client, InvalidArgument, NotFound, Unavailable
from embedsense.client._api import Call
from embedsense.proto.tensors import to_tensor
from embedsense.proto.v1 import embedsense_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["EmbedSense"]


def raw_call(channel: grpc.Channel, rpc: str, payload: bytes, metadata=()):  # noqa: ANN001
    """Call an RPC with raw request bytes, as a non-Python client might send them."""
    method = SERVICE.methods_by_name[rpc]
    response = method.output_type._concrete_class.FromString  # noqa: SLF001
    path = f"/{SERVICE.full_name}/{rpc}"
    if method.client_streaming:
        return channel.stream_unary(path, response_deserializer=response)(
            iter([payload]), timeout=30, metadata=metadata
        )
    return channel.unary_unary(path, response_deserializer=response)(
        payload, timeout=30, metadata=metadata
    )


# ------------------------------------------------------------------ bad input


@pytest.fixture
def collection(client):
    client.create_collection("hardening", store_tokens=True)
    client.upsert("hardening", ["我喜欢吃苹果", "我买了最新的苹果手机"], show_progress_bar=False)
    yield "hardening"
    client.drop_collection("hardening")


def not_an_object(collection: str) -> pb.UpsertRequest:
    """An upsert whose document's metadata is a JSON array."""
    document = pb.Document(text="x", metadata_json="[1]")
    return pb.UpsertRequest(collection=collection, documents=[document])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c, _: c._call(Call("Embed", pb.EmbedRequest(texts=[]), id)), "at least one text"),
        (lambda c, _: c.encode([""]), r"texts\[0\]: empty"),
        (lambda c, _: c.encode(["ok", " \n\t "]), r"texts\[1\]: empty"),
        (lambda c, _: c.encode(["苹果\x00手机"]), r"U\+0000 at position 2"),
        (lambda c, _: c.encode(["bell\x07"]), r"U\+0007"),
        (lambda c, _: c.encode(["苹" * 1_000_000]), "1000000 characters; the limit is 100000"),
        (
            lambda c, _: c._call(Call("Embed", pb.EmbedRequest(texts=["字"] * 10_000), id)),
            "10000 texts; the limit",
        ),
        (  # the SDK refuses it before sending (test_data_ops_api.py); another client's
            lambda c, col: c._call(
                Call("Search", pb.SearchRequest(collection=col, text="苹果", k=0), id)
            ),
            "k: must be at least 1",
        ),
        (lambda c, col: c.search(col, "苹果", k=10**9), "k must be within 1-10000"),
        (lambda c, col: c.search(col, "苹果", filter={"a": {"$bad": 1}}), "unknown operator"),
        (lambda c, col: c.search(col, np.ones(7)), "384-dim"),
        (lambda c, _: c.disambiguate("我喜欢吃香蕉", "苹果"), "does not occur"),
        # An error that repeats a long label or name is cut: its whole text went in a
        # header past gRPC's 16 KiB, and the caller got RESOURCE_EXHAUSTED instead.
        (
            lambda c, _: c.disambiguate(
                "我喜欢吃苹果", "苹果", {" " + "标" * 20_000: ["苹果很甜"], "b": ["苹果手机"]}
            ),
            r"^INVALID_ARGUMENT: .*标… \(cut: 20,\d{3} characters\)$",
        ),
        # A long word is quoted by its first 40 characters and its length.
        (
            lambda c, col: c.search_occurrences(col, "我喜欢吃苹果", "苹果" * 10_000),
            r"^INVALID_ARGUMENT: word '(苹果){20}'\.\.\. \(20,000 characters\) does not occur",
        ),
        (
            lambda c, _: c.disambiguate("我喜欢吃苹果", "苹" * 20_000, {"a": ["x"], "b": ["y"]}),
            r"^INVALID_ARGUMENT: word '苹{40}'\.\.\. \(20,000 characters\) does not occur",
        ),
        # The server's own check: the SDK refuses it before sending (test_client_bulk.py).
        (lambda c, col: c._call(Call("Upsert", not_an_object(col), id, stream=True)), "metadata"),
    ],
)
def test_bad_input_gets_a_precise_error_and_the_server_goes_on(client, collection, call, message):
    with pytest.raises(InvalidArgument, match=message):
        call(client, collection)
    assert client.search(collection, "苹果", k=1)[0].id  # a good request still works


def test_unknown_collection_and_undecodable_bytes(client, server, collection):
    with pytest.raises(NotFound, match="no-such-collection"):
        client.search("no-such-collection", "苹果")
    # Field 1 (texts) holding a UTF-8-encoded lone surrogate: not valid UTF-8 on the wire.
    lone_surrogate = b"\x0a\x03\xed\xa0\x80"
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            raw_call(channel, "Embed", lone_surrogate)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in failure.value.details()
        with pytest.raises(grpc.RpcError) as failure:
            raw_call(channel, "Upsert", b"\x12\x04\x12\x02\xed\xa0")  # in a streamed document
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # After messages that were stored, the status says so, as for any other refusal.
        stored = pb.UpsertRequest(collection=collection, documents=[
            pb.Document(id="kept-1", text="苹果"), pb.Document(id="kept-2", text="香蕉")
        ]).SerializeToString()  # fmt: skip
        upsert = channel.stream_unary(f"/{SERVICE.full_name}/Upsert")
        with pytest.raises(grpc.RpcError) as failure:
            upsert(iter([stored, b"\x12\x04\x12\x02\xed\xa0"]), timeout=30)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not decode" in failure.value.details()
        assert "(2 documents sent before it were stored)" in failure.value.details()
    assert client.info().dim == 384


# ------------------------------------------------------------------ auth and TLS


def test_every_rpc_but_health_needs_the_key(e5, tmp_path):
    running = ServerThread(e5, tmp_path, api_key="first-key, second-key")
    try:
        with grpc.insecure_channel(running.target) as channel:
            for rpc in SERVICE.methods_by_name:
                for metadata in ((), (("authorization", "Bearer nope"),)):
                    with pytest.raises(grpc.RpcError) as failure:
                        raw_call(channel, rpc, b"", metadata)
                    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, rpc
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        for key in ("first-key", "second-key"):
            with Client(running.target, api_key=key) as c:
                assert c.info().auth_required
    finally:
        running.stop()


def test_tls_and_mutual_tls_round_trips(e5, tmp_path, pki):
    tls_server = ServerThread(e5, tmp_path / "tls", tls_cert=pki / "server.pem",
                              tls_key=pki / "server.key")  # fmt: skip
    try:
        with Client(tls_server.target, tls=TLS(root_certificates=pki / "ca.pem")) as c:
            assert c.encode(["苹果"]).shape == (1, 384)
        with Client(tls_server.target, timeout=5) as plain:  # no TLS: no connection
            with pytest.raises(Unavailable):
                plain.info()
    finally:
        tls_server.stop()
    mtls_server = ServerThread(
        e5, tmp_path / "mtls", tls_cert=pki / "server.pem", tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )  # fmt: skip
    try:
        mutual = TLS(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        with Client(mtls_server.target, tls=mutual) as c:
            assert c.info().dim == 384
        with Client(mtls_server.target, tls=TLS(pki / "ca.pem"), timeout=5) as anonymous:
            with pytest.raises(Unavailable):  # the handshake fails without a certificate
                anonymous.info()
    finally:
        mtls_server.stop()


def test_cli_client_certificate_alone_turns_on_mutual_tls(e5, tmp_path, pki):
    """--tls-cert/--tls-key without --tls or --tls-ca once fell back to plaintext, silently."""
    running = ServerThread(
        e5, tmp_path, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )  # fmt: skip
    # The test CA stands in for the system's roots: no --tls-ca is given.
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki / "ca.pem")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "embedsense.client.cli", "--target", running.target,
             "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"),
             "--json", "info"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-500:]
        assert json.loads(done.stdout)["dim"] == 384
        half = subprocess.run(
            [sys.executable, "-m", "embedsense.client.cli", "--target", running.target,
             "--tls-cert", str(pki / "client.pem"), "info"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert half.returncode != 0 and "--tls-key" in half.stderr
    finally:
        running.stop()


# ------------------------------------------------------------------ operations


def test_with_a_key_undecodable_bytes_are_refused_for_the_key_first_then_for_the_bytes(
    e5, tmp_path
):
    running = ServerThread(e5, tmp_path, api_key="the-key")
    lone_surrogate = b"\x0a\x03\xed\xa0\x80"
    key = (("authorization", "Bearer the-key"),)
    try:
        with grpc.insecure_channel(running.target) as channel:
            for _ in range(2):  # the second time through the handler the guard kept
                with pytest.raises(grpc.RpcError) as failure:
                    raw_call(channel, "Embed", lone_surrogate)
                assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as failure:
                    raw_call(
                        channel, "Embed", lone_surrogate, (("authorization", "Bearer the-key"),)
                    )
                assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "UTF-8" in failure.value.details()
            unknown = channel.unary_unary(f"/{SERVICE.full_name}/NoSuchMethod")
            with pytest.raises(grpc.RpcError) as failure:
                unknown(b"", timeout=30, metadata=key)
            assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop()


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_can_be_turned_off_and_the_metrics_still_count(
    e5, tmp_path, caplog, access_log
):
    caplog.set_level(logging.INFO, logger="embedsense.access")
    running = ServerThread(e5, tmp_path, metrics_port=0, access_log=access_log)
    try:
        with Client(running.target) as c:
            for _ in range(3):
                c.info()
        url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'embedsense_requests_total{code="OK",rpc="Info"} 3.0' in text
        lines = [r for r in caplog.records if r.name == "embedsense.access"]
        assert len(lines) == (3 if access_log else 0)
    finally:
        running.stop()


def test_metrics_and_request_ids(e5, tmp_path):
    running = ServerThread(e5, tmp_path, metrics_port=0)
    try:
        with Client(running.target) as c:
            c.create_collection("m")
            c.upsert("m", ["苹果", "香蕉"], show_progress_bar=False)
            c.search("m", "水果", k=1)
            with pytest.raises(NotFound):
                c.search("nope", "x")
        with grpc.insecure_channel(running.target) as channel:
            stub = channel.unary_unary(
                f"/{SERVICE.full_name}/Info", response_deserializer=pb.InfoResponse.FromString
            )
            _, call = stub.with_call(b"", metadata=(("x-request-id", "trace-42"),))
            assert ("x-request-id", "trace-42") in call.trailing_metadata()
            _, call = stub.with_call(b"")
            assert dict(call.trailing_metadata())["x-request-id"]  # made up when not sent
            # A call whose deadline passes on the server is counted as such (it was
            # counted CANCELLED, as a caller who hung up).
            embed = channel.unary_unary(
                f"/{SERVICE.full_name}/Embed",
                request_serializer=pb.EmbedRequest.SerializeToString,
                response_deserializer=pb.EmbedResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as late:
                embed(pb.EmbedRequest(texts=["苹果很甜，我每天都吃一个。" * 30] * 64), timeout=0.05)
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            # A request that does not decode is counted and gets its request id back, as
            # every RPC (it got neither).
            with pytest.raises(grpc.RpcError) as undecodable:
                raw_call(channel, "Embed", b"\x0a\x03\xed\xa0\x80",
                         metadata=(("x-request-id", "trace-43"),))  # fmt: skip
            assert undecodable.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert ("x-request-id", "trace-43") in undecodable.value.trailing_metadata()
            time.sleep(0.5)  # the server's side of it ends after the client's
        url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'embedsense_requests_total{code="DEADLINE_EXCEEDED",rpc="Embed"} 1.0' in text
        assert 'code="CANCELLED",rpc="Embed"' not in text
        assert 'embedsense_requests_total{code="INVALID_ARGUMENT",rpc="Embed"} 1.0' in text
        assert 'embedsense_requests_total{code="OK",rpc="Search"} 1.0' in text
        assert 'embedsense_requests_total{code="NOT_FOUND",rpc="Search"} 1.0' in text
        assert 'embedsense_collection_documents{collection="m"} 2.0' in text
        assert "embedsense_request_seconds_bucket" in text and "embedsense_batch_tokens" in text
        assert "embedsense_engine_queue_depth" in text and "embedsense_model_load_seconds" in text
    finally:
        running.stop()


def serve_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embedsense.client.cli", "serve", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "EMBEDSENSE_API_KEY": "", **(env or {})},
    )  # fmt: skip


def test_startup_fails_fast_and_clearly(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cases = [
            ((f"--port={free_port()}", f"--data-dir={not_a_dir}"), "not a writable directory"),
            ((f"--port={taken.getsockname()[1]}", f"--data-dir={tmp_path / 'd'}"),
             "cannot listen"),
            ((f"--port={free_port()}", f"--data-dir={tmp_path / 'd'}", "--model",
              "nobody/no-such-model"), "nobody/no-such-model"),
            # These were a traceback (bind()'s OverflowError), exit 1.
            (("--port=70000", f"--data-dir={tmp_path / 'd'}"), "port 70000: expected a port"),
            ((f"--port={free_port()}", "--http-port=-5", f"--data-dir={tmp_path / 'd'}"),
             "http_port -5: expected a port number in 0-65535 (--http-port"),
        ]  # fmt: skip
        for args, message in cases:
            started = time.monotonic()
            process = serve_process(*args, env={"HF_HUB_OFFLINE": "1"})
            _, err = process.communicate(timeout=120)
            assert process.returncode == 2, err
            assert message in err and "cannot start" in err
            assert time.monotonic() - started < 60
    finally:
        taken.close()


def test_sigterm_drains_a_second_exits_at_once_and_logs_are_json(tmp_path):
    port = free_port()
    server = serve_process(f"--port={port}", f"--data-dir={tmp_path}")
    target = f"127.0.0.1:{port}"
    try:
        with Client(target, timeout=2, retry=None) as probe:
            for _ in range(240):
                try:
                    probe.info()
                    break
                except Unavailable:
                    time.sleep(0.5)
        results: list = []
        secret = "这是一段机密内容"

        def long_call() -> None:
            with Client(target, timeout=120) as c:
                try:
                    # Seconds of work on any CPU (about 40 tokens a text): a fast one
                    # finished 600 short texts before the second signal, past the drain.
                    texts = [f"{secret * 4}{i}" for i in range(600)]
                    results.append(c.encode(texts, batch_size=600))
                except Exception as err:  # noqa: BLE001
                    results.append(err)

        caller = threading.Thread(target=long_call)
        caller.start()
        time.sleep(1.0)
        server.send_signal(signal.SIGTERM)  # drains: the call is in flight
        time.sleep(0.5)
        assert server.poll() is None and not results  # still draining
        server.send_signal(signal.SIGTERM)  # and this one does not wait
        started = time.monotonic()
        server.wait(timeout=10)
        assert time.monotonic() - started < 5 and server.returncode == 1
        caller.join(30)
    finally:
        if server.poll() is None:
            server.kill()
    _, err = server.communicate()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("serving") for line in lines)
    access = [line for line in lines if line["logger"] == "embedsense.access"]
    assert access and all(line["request_id"] != "-" and "rpc" in line for line in access)
    assert secret not in err  # no request text in the logs


# ------------------------------------------------------------------ fuzzing

# Texts over the model's 512 positions get a third of the draws: handlers must map what a
# long text raises (they once let TextTooLongError through as INTERNAL).
TEXT = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(
        ["苹果", "我喜欢吃苹果", "", " ", "Flat", "HNSW32", "default", '{"a": 1}', "{"]
    ),
    st.sampled_from(["苹果" * 600, "我喜欢吃苹果。" * 100, "x" * 3000]),
)
SCALARS = {
    1: st.floats(allow_nan=True, width=64), 2: st.floats(allow_nan=True, width=32),
    3: st.integers(-(2**63), 2**63 - 1), 4: st.integers(0, 2**64 - 1),
    5: st.integers(-(2**31), 2**31 - 1), 8: st.booleans(), 9: TEXT,
    12: st.binary(max_size=64),
    # Large counts (k, max_k, central...) as often as small ones: bounds must hold.
    13: st.integers(0, 2**32 - 1) | st.sampled_from([21, 10_001, 2**31, 2**32 - 1]),
}  # fmt: skip


def message_strategy(descriptor, depth: int = 0):  # noqa: ANN001, ANN201
    """Random messages of a type: every field may be set, with any value of its type."""
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields
            fields[field.name] = st.dictionaries(SCALARS[key.type], _value(value, depth),
                                                 max_size=3)  # fmt: skip
            continue
        one = _value(field, depth)
        fields[field.name] = st.lists(one, max_size=3) if field.is_repeated else one
    optional = {name: strategy for name, strategy in fields.items()}
    return st.fixed_dictionaries({}, optional=optional).map(
        lambda values: _build(descriptor, values)
    )


def _value(field, depth: int):  # noqa: ANN001, ANN202
    if field.message_type is not None:
        if depth >= 3:
            return st.just(field.message_type._concrete_class())  # noqa: SLF001
        return message_strategy(field.message_type, depth + 1)
    if field.enum_type is not None:
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(0, 99)
    return SCALARS[field.type]


def _build(descriptor, values: dict):  # noqa: ANN001, ANN202
    message = descriptor._concrete_class()  # noqa: SLF001
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


@pytest.fixture(scope="module")
def fuzz_server(e5, tmp_path_factory):
    running = ServerThread(e5, tmp_path_factory.mktemp("fuzz"))
    with Client(running.target) as c:
        c.create_collection("fuzz", store_tokens=True)
        c.upsert("fuzz", ["我喜欢吃苹果", "我买了最新的苹果手机"], show_progress_bar=False)
    yield running
    running.stop()


# 20 per RPC in CI (~420 requests); more with EMBEDSENSE_FUZZ_EXAMPLES=500 pytest -k fuzzed.
FUZZ_EXAMPLES = int(os.environ.get("EMBEDSENSE_FUZZ_EXAMPLES", "20"))
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize("rpc", list(SERVICE.methods_by_name))
def test_fuzzed_requests_never_crash_hang_or_fail_internally(fuzz_server, rpc):
    method = SERVICE.methods_by_name[rpc]
    channel = grpc.insecure_channel(fuzz_server.target)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(message_strategy(method.input_type))
    def call(message) -> None:  # noqa: ANN001
        try:
            raw_call(channel, rpc, message.SerializeToString())
        except grpc.RpcError as err:
            assert err.code() not in BAD, f"{rpc}: {err.code().name}: {err.details()}"

    try:
        call()
    finally:
        channel.close()
    with Client(fuzz_server.target) as c:
        assert c.info().dim == 384  # still serving


# ------------------------------------------------------------------ fuzzing filters

# Filters drawn from the query language's own shape, so most get past JSON parsing and
# reach the compiler and the store: odd field names, every operator and some unknown ones,
# operands of every JSON type (integers past 64 bits, NaN and infinities, which Python's
# json writes and reads), nesting, and $in lists at, under and over their limit.
FILTER_SCALAR = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
)  # fmt: skip
FILTER_FIELD = st.sampled_from(
    ["lang", "year", "score", "source.site", "tags", "a.b.c", "", "bad name", "x" * 300,
     "$and", "$or", "$not", "lang."]
) | st.text(max_size=6)  # fmt: skip
FILTER_OP = st.sampled_from(
    ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$and", "$or", "$not",
     "$exists", "$regex", "eq", ""]
)  # fmt: skip
# Long lists are built, not drawn (Hypothesis draws lists of a few thousand at most).
IN_LIST = st.tuples(st.sampled_from([0, 1, 1_001, 10_000, 10_001]), st.booleans()).map(
    lambda drawn: [str(i) if drawn[1] else i for i in range(drawn[0])]
)
# Most draws are well formed (field -> value or {operator: operand}, and $in lists of every
# size on their own), so that they reach the store; the rest is any JSON of the same parts.
WELL_FORMED_FILTER = st.dictionaries(
    FILTER_FIELD,
    FILTER_SCALAR | st.dictionaries(FILTER_OP, FILTER_SCALAR | IN_LIST, min_size=1, max_size=3),
    min_size=1,
    max_size=3,
)
MEMBERSHIP_FILTER = st.builds(lambda field, values: {field: {"$in": values}}, FILTER_FIELD, IN_LIST)
FILTER_JSON = (
    WELL_FORMED_FILTER
    | MEMBERSHIP_FILTER
    | st.recursive(
        FILTER_SCALAR | IN_LIST,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(FILTER_FIELD | FILTER_OP, inner, max_size=4)
        ),
        max_leaves=12,
    )
)


@pytest.fixture(scope="module")
def filter_collection(fuzz_server):
    metadata = [{"lang": "zh", "year": 2021, "score": 0.5, "source": {"site": "wiki"}},
                {"lang": "en", "year": 1999, "tags": ["a", "b"]}, {"year": "2021"}, {}]  # fmt: skip
    with Client(fuzz_server.target) as c:
        c.create_collection("filters")
        c.upsert("filters", [{"id": str(i), "text": f"苹果 {i}", "metadata": m}
                             for i, m in enumerate(metadata)], show_progress_bar=False)  # fmt: skip
    return "filters"


def test_fuzzed_filters_never_fail_internally(fuzz_server, filter_collection):
    channel = grpc.insecure_channel(fuzz_server.target)
    statuses: set[grpc.StatusCode] = set()

    @settings(max_examples=FUZZ_EXAMPLES * 5, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(FILTER_JSON, st.booleans(), st.integers(0, 12))
    def search(where, by_vector, k) -> None:  # noqa: ANN001
        request = pb.SearchRequest(collection=filter_collection, k=k, filter_json=json.dumps(where))
        if by_vector:
            request.vector.CopyFrom(to_tensor(np.ones(384, np.float32)))
        else:
            request.text = "苹果"
        try:
            raw_call(channel, "Search", request.SerializeToString())
            statuses.add(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            assert err.code() not in BAD, f"{where!r:.300}: {err.code().name}: {err.details()}"
            statuses.add(err.code())

    try:
        search()
    finally:
        channel.close()
    # The draws reached both sides of the checks: some filters ran, some were refused.
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= statuses, statuses
