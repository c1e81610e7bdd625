"""test_http.py's tests (the `openai` and huggingface_hub clients, the OpenAI and TEI routes,
/metrics) against `--frontends 2`: the front-end processes share the HTTP port as well."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_http import *  # noqa: F403 - every test, with the server below
from test_http import KEY


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends-http"), http_port=0,
                             api_key=KEY, metrics_port=0, http_body_timeout_s=1.0)  # fmt: skip
    yield server
    server.stop()
