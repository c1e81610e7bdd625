"""Hub fetching is real code behind an explicit opt-in; tests only see its offline errors."""

from __future__ import annotations

import pytest

from embedsense.model import REGISTRY, load_model
from embedsense.model.hub import ModelNotAvailableError, fetch_hf_model


def test_uncached_model_without_opt_in_says_how_to_opt_in():
    with pytest.raises(ModelNotAvailableError, match="allow_download=True") as err:
        load_model("bert-base-chinese")
    assert "google-bert/bert-base-chinese" in str(err.value)


def test_download_while_offline_is_a_clear_error():
    # conftest sets HF_HUB_OFFLINE=1: the hub client refuses before any traffic.
    with pytest.raises(ModelNotAvailableError, match="could not download .*offline"):
        fetch_hf_model("intfloat/multilingual-e5-base", allow_download=True)


def test_registry_names_the_768_dim_models_and_the_default():
    assert REGISTRY["multilingual-e5-small"].source == "bundled-e5s1"
    assert REGISTRY["multilingual-e5-base"].dim == 768
    assert REGISTRY["bert-base-chinese"].dim == 768 and REGISTRY["bert-base-chinese"].prefixes == {}
