"""test_http_senses.py's tests against `--frontends 2`: word senses over HTTP from the
front-end processes, whose senses calls reach the engine and the index through the bridge."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_http_senses import *  # noqa: F403 - every test, with the server below
from test_http_senses import KEY


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends-http-senses"), http_port=0,
                             api_key=KEY)  # fmt: skip
    yield server
    server.stop()
