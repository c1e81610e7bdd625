"""The senses' and the explainer's service tests (test_senses.py, test_explain.py) against
`--frontends 2`: the explainer runs in the engine process, the senses' occurrences come from
its index, and both answer through either front end as through one process."""

from __future__ import annotations

import pytest
from conftest import FrontEndsThread
from test_explain import (  # noqa: F401 - the tests, with the server below
    test_a_chosen_layer_and_head_and_the_response_bound,
    test_a_neuron_outside_the_model_is_invalid_argument_naming_the_range,
    test_a_text_over_the_model_positions_is_a_clear_error_or_a_truncated_window,
    test_attention_maps_are_distributions_of_the_requested_shape,
    test_the_async_client_asks_for_a_neuron_too,
    test_the_layer_trajectory_shows_contexts_separating,
    test_the_neuron_vectors_give_that_heads_attention_rows,
)
from test_senses import (  # noqa: F401
    apples,
    test_default_inventory_tells_the_two_apples_apart,
    test_disambiguate_with_given_senses_spans_and_occurrences,
    test_induce_senses_splits_fruit_from_company,
    test_inventories_are_created_used_listed_and_deleted,
    test_search_occurrences_finds_the_same_sense,
    test_sense_errors_name_the_offending_input,
)


@pytest.fixture(scope="module")
def server(e5, tmp_path_factory):
    running = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends-senses"))
    yield running
    running.stop()
