"""test_data_ops_api.py's tests (filters, delete/count/scroll by filter, metadata updates,
batch search, over gRPC, HTTP, the SDK and the CLI) against `--frontends 2`, on both index
backends: the index stays in the engine process, each front end's calls reach it."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_data_ops_api import *  # noqa: F403 - every test, with the server below
from test_data_ops_api import KEY


@pytest.fixture(scope="module", params=["faiss", "milvus-lite-file"])
def running(e5, tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("front-ends-data-ops")
    backend = {}
    if request.param != "faiss":
        backend = {"index_backend": "milvus", "milvus_uri": str(folder / "index.db")}
    server = FrontEndsThread(e5, folder, http_port=0, api_key=KEY, **backend)
    yield server
    server.stop()
