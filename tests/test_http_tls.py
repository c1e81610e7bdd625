"""The HTTP port under the gRPC port's TLS: the real `openai` client over https with the test
CA, mutual TLS refusing a client without a certificate on both ports, and plain text only
when asked for."""

from __future__ import annotations

import asyncio
import logging
import ssl

import numpy as np
import openai
import pytest
from conftest import ServerThread

from embedsense.client import TLS, Client, Unavailable
from embedsense.server.api.app import EmbedSenseServer, StartupError
from embedsense.server.api.settings import ServerSettings

TEXTS = ["我喜欢吃苹果", "我买了最新的苹果手机"]


def openai_client(url: str, verify: ssl.SSLContext | bool = True) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url,
        api_key="none",
        max_retries=0,
        timeout=30,
        http_client=openai.DefaultHttpxClient(verify=verify),
    )


def trusting(pki, with_certificate: bool = False) -> ssl.SSLContext:  # noqa: ANN001
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


def embeddings(client: openai.OpenAI) -> np.ndarray:
    response = client.embeddings.create(model="multilingual-e5-small", input=TEXTS)
    return np.array([d.embedding for d in response.data], np.float32)


def test_the_http_port_serves_under_the_grpc_certificate(e5, tmp_path, pki):
    running = ServerThread(
        e5, tmp_path, http_port=0, tls_cert=pki / "server.pem", tls_key=pki / "server.key"
    )
    port = running.server.http_port
    try:
        over_tls = embeddings(openai_client(f"https://127.0.0.1:{port}/v1", trusting(pki)))
        with Client(running.target, tls=TLS(root_certificates=pki / "ca.pem")) as c:
            np.testing.assert_allclose(over_tls, c.encode(TEXTS, role="query"), atol=1e-5)
        with pytest.raises(openai.APIConnectionError):  # plain text gets no answer
            embeddings(openai_client(f"http://127.0.0.1:{port}/v1"))
        with pytest.raises(openai.APIConnectionError):  # nor does a client that can't verify
            embeddings(openai_client(f"https://127.0.0.1:{port}/v1"))
    finally:
        running.stop()


def test_mutual_tls_refuses_a_client_without_a_certificate_on_both_ports(e5, tmp_path, pki):
    running = ServerThread(
        e5,
        tmp_path,
        http_port=0,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem",
    )
    url = f"https://127.0.0.1:{running.server.http_port}/v1"
    try:
        assert embeddings(openai_client(url, trusting(pki, with_certificate=True))).shape == (
            2,
            384,
        )
        with pytest.raises(openai.APIConnectionError):
            embeddings(openai_client(url, trusting(pki)))
        with Client(running.target, tls=TLS(pki / "ca.pem"), timeout=5) as anonymous:
            with pytest.raises(Unavailable):
                anonymous.info()
    finally:
        running.stop()


def test_plain_http_beside_tls_only_when_asked_for_and_with_a_warning(e5, tmp_path, pki, caplog):
    caplog.set_level(logging.WARNING, logger="embedsense.server.api.app")
    running = ServerThread(
        e5,
        tmp_path,
        http_port=0,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        http_insecure=True,
    )
    try:
        url = f"http://127.0.0.1:{running.server.http_port}/v1"
        assert embeddings(openai_client(url)).shape == (2, 384)
        assert any("plain text" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        running.stop()


@pytest.mark.parametrize(
    "files, message",
    [
        ({"tls_client_ca": "ca.pem"}, "tls_client_ca needs tls_cert and tls_key"),
        ({"tls_cert": "server.pem"}, "needs both tls_cert and tls_key"),
        ({"tls_cert": "server.pem", "tls_key": "missing.key"}, "missing.key"),
        ({"tls_cert": "server.pem", "tls_key": "client.key"}, "tls_key"),  # not its pair
    ],
)
def test_unusable_tls_settings_stop_the_start_before_the_model_loads(tmp_path, pki, files, message):
    paths = {name: pki / file for name, file in files.items()}
    # No model is given: reaching the model loader would take seconds and say otherwise.
    server = EmbedSenseServer(
        ServerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "d", http_port=0, **paths)
    )
    with pytest.raises(StartupError, match=message):
        asyncio.run(server.start())
    assert not (tmp_path / "d").exists()
