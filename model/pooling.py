"""Token vectors -> one sentence vector."""

from __future__ import annotations

from enum import StrEnum

import torch


class Pooling(StrEnum):
    MEAN = "mean"  # average of all real tokens, specials included (how e5 was trained)
    CLS = "cls"  # the first token's vector


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """hidden (B, T, C), attention_mask (B, T) -> (B, C) in float32."""
    hidden = hidden.float()
    if Pooling(how) is Pooling.CLS:
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
