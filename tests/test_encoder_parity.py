"""Our encoder against transformers' BertModel / XLMRobertaModel on the same random weights:
every layer's hidden states and every attention map agree to 1e-4, with padding in the batch."""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch, tiny_bert, tiny_xlmr
from transformers import BertConfig, BertModel

from embedsense.model.checkpoint import encoder_config_from_hf, encoder_from_hf_state_dict
from embedsense.model.encoder import Packing

TOL = 1e-4


def ours_for(reference):
    """Our encoder carrying the reference model's exact weights."""
    cfg = encoder_config_from_hf(reference.config.to_dict())
    return encoder_from_hf_state_dict(cfg, reference.state_dict())


def run_both(reference, ids: torch.Tensor, mask: torch.Tensor):
    ours = ours_for(reference)
    with torch.inference_mode():
        theirs = reference(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
        )
        mine = ours(ids, mask, output_hidden_states=True, output_attentions=True)
    return theirs, mine


def assert_same(theirs, mine, mask: torch.Tensor) -> None:
    real = mask.bool()  # padded positions carry no meaning: compare real tokens only
    assert len(mine.hidden_states) == len(theirs.hidden_states)
    for layer, (a, b) in enumerate(zip(theirs.hidden_states, mine.hidden_states, strict=True)):
        err = (a[real] - b[real]).abs().max().item()
        assert err <= TOL, f"hidden state {layer} differs by {err}"
    assert len(mine.attentions) == len(theirs.attentions)
    for layer, (a, b) in enumerate(zip(theirs.attentions, mine.attentions, strict=True)):
        rows = real[:, None, :, None].expand_as(a)
        err = (a - b).abs()[rows].max().item()
        assert err <= TOL, f"attention {layer} differs by {err}"
    fast = (theirs.last_hidden_state[real] - mine.last_hidden_state[real]).abs().max().item()
    assert fast <= TOL


def test_tiny_bert_matches_transformers():
    ref = tiny_bert()
    ids, mask = padded_batch([7, 19, 3, 12], ref.config.vocab_size, pad_id=0)
    assert_same(*run_both(ref, ids, mask), mask)


@pytest.mark.parametrize(
    ("lengths", "grids"),
    [([2, 38, 5, 30, 9, 24, 1, 36], 4), ([20, 19, 18, 20], 1), ([3, 30, 6], 3)],
    ids=["mixed", "alike: one grid", "fewer rows than groups"],
)
def test_attention_on_grids_grouped_by_length_matches_transformers(lengths, grids):
    """Grouping rows by length for attention changes only how much padding attention pays
    for: on lengths alike it is not worth its gathers and the batch keeps one grid."""
    ref = tiny_bert()
    ids, mask = padded_batch(lengths, ref.config.vocab_size, pad_id=0)
    ours = ours_for(ref)
    ours.attention_groups = 4
    assert len(Packing(mask, ours.attention_groups).groups) == grids
    with torch.inference_mode():
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        mine = ours(ids, mask, output_hidden_states=True)
    real = mask.bool()
    assert (theirs[real] - mine.last_hidden_state[real]).abs().max().item() <= TOL
    assert not mine.last_hidden_state[~real].any()  # padding stays zero, as documented


def test_tiny_xlmr_matches_transformers_with_offset_positions():
    ref = tiny_xlmr()
    # 40 real tokens: the most XLM-R's 42-row position table takes (2 rows sit below pad+1).
    ids, mask = padded_batch([40, 9, 25], ref.config.vocab_size, pad_id=1)
    assert_same(*run_both(ref, ids, mask), mask)


def test_full_bert_base_chinese_shape_matches_transformers():
    torch.manual_seed(3)
    config = BertConfig(vocab_size=21128, attn_implementation="eager")  # 768/12/12/3072
    ref = BertModel(config, add_pooling_layer=False).eval()
    ids, mask = padded_batch([24, 9, 16], config.vocab_size, pad_id=0)
    assert_same(*run_both(ref, ids, mask), mask)


def test_fast_path_equals_explicit_path():
    ref = tiny_bert()
    ours = ours_for(ref)
    ids, mask = padded_batch([11, 5], ref.config.vocab_size, pad_id=0)
    with torch.inference_mode():
        fast = ours(ids, mask, output_hidden_states=True)
        explicit = ours(ids, mask, output_hidden_states=True, output_attentions=True)
    for a, b in zip(fast.hidden_states, explicit.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert fast.attentions is None


def test_attention_rows_are_distributions_and_ignore_padding():
    ref = tiny_bert()
    ours = ours_for(ref)
    ids, mask = padded_batch([9, 4], ref.config.vocab_size, pad_id=0)
    with torch.inference_mode():
        out = ours(ids, mask, output_attentions=True)
    assert len(out.attentions) == ref.config.num_hidden_layers
    for probs in out.attentions:
        assert probs.shape == (2, ref.config.num_attention_heads, 9, 9)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 9))
        assert torch.all(probs[1, :, :, 4:] == 0), "padding keys must get exactly zero weight"


@pytest.mark.parametrize("bad", ["hidden_act", "position_embedding_type", "model_type"])
def test_unsupported_configs_are_refused_by_name(bad):
    config = tiny_bert().config.to_dict()
    config[bad] = {"hidden_act": "relu", "position_embedding_type": "relative_key"}.get(bad, "gpt2")
    with pytest.raises(ValueError, match=bad):
        encoder_config_from_hf(config)
