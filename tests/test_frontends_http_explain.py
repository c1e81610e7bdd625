"""test_http_explain.py's tests against `--frontends 2`: explanations over HTTP from the
front-end processes, whose explainer calls reach the engine process through the bridge."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_http_explain import (  # noqa: F401 - the tests, with the server below
    KEY,
    client,
    send,
    test_a_key_is_needed,
    test_a_long_text_is_refused_unless_truncated,
    test_bad_requests_get_the_rest_dialects_errors,
    test_compare_layers_gives_the_grpc_answer,
    test_explain_gives_the_grpc_answer_in_either_encoding,
    test_explain_whole_model_role_span_and_neuron,
    test_too_many_attention_values_ask_for_fewer_layers,
)


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends-http-explain"),
                             http_port=0, api_key=KEY)  # fmt: skip
    yield server
    server.stop()
