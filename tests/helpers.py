"""Builders for small random-weight reference models (transformers) used by several tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

TINY = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
    max_position_embeddings=40, attn_implementation="eager",
)  # fmt: skip


def tiny_bert(vocab_size: int = 120) -> BertModel:
    torch.manual_seed(1)
    return BertModel(BertConfig(vocab_size=vocab_size, **TINY), add_pooling_layer=True).eval()


def tiny_xlmr(vocab_size: int = 150) -> XLMRobertaModel:
    torch.manual_seed(2)
    config = XLMRobertaConfig(vocab_size=vocab_size, pad_token_id=1, **{
        **TINY, "max_position_embeddings": 42, "layer_norm_eps": 1e-5,
    })  # fmt: skip
    return XLMRobertaModel(config, add_pooling_layer=False).eval()


def padded_batch(
    lengths: list[int], vocab_size: int, pad_id: int, first_id: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids right-padded to the longest length, and the matching attention mask."""
    gen = torch.Generator().manual_seed(sum(lengths))
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(first_id, vocab_size, (n,), generator=gen)
        mask[row, :n] = 1
    return ids, mask


def bert_reference_for(cfg) -> BertModel:
    """A transformers BertModel with the shape of one of our EncoderConfigs (BERT-style
    positions from 0, as e5-small uses), ready for `to_hf_state_dict` weights."""
    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=cfg.pad_token_id,
    )
    return BertModel(config, add_pooling_layer=False).eval()


BERT_CHINESE_VOCAB = 21128  # [PAD], [unused1-99], [UNK], [CLS], [SEP], [MASK], then pieces


def bert_chinese_shaped_dir(root: Path) -> BertModel:
    """Saves a loadable HF directory with bert-base-chinese's shape (random weights: speed
    does not depend on their values) and a per-character vocabulary, so Chinese splits as
    the real one does; returns the transformers model it saved, as the reference."""
    torch.manual_seed(0)
    reference = BertModel(BertConfig(vocab_size=BERT_CHINESE_VOCAB), add_pooling_layer=False)
    reference.save_pretrained(root)
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]"]
    specials.append("[MASK]")
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + BERT_CHINESE_VOCAB - len(specials))]
    (root / "vocab.txt").write_text("\n".join(specials + chars) + "\n", encoding="utf-8")
    return reference.eval()
