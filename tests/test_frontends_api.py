"""The API tests of test_api.py, run against `--frontends 2`: two front-end processes
serving the port around this process's engine and index give every answer, and every
error, that one process gives."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_api import *  # noqa: F403 - every test, with the server below


@pytest.fixture(scope="module")
def server(e5, tmp_path_factory):
    running = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends-data"))
    yield running
    running.stop()
