"""A 4-bit word-embedding table that dequantizes only the rows a batch looks up.

The bundled e5 model's vocabulary is 250k rows: 366 MiB as float32 but 60 MiB as Q4_0
blocks. Only a few hundred rows are touched per batch, so keeping the table packed costs
almost nothing per forward and gives the saving back to every server process. The values
are exactly those of dequantizing the whole table up front.
"""

from __future__ import annotations

import torch
from torch import nn


class Q4Embedding(nn.Module):
    def __init__(self, scales: torch.Tensor, packed: torch.Tensor) -> None:
        """scales (rows, nb) float; packed (rows, nb, 16) uint8, two weights per byte."""
        super().__init__()
        # Buffers, not parameters: `.to(dtype)` converts the scales and leaves the nibbles.
        self.register_buffer("scales", scales)
        self.register_buffer("packed", packed)

    @property
    def num_embeddings(self) -> int:
        return self.scales.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.scales.shape[1] * 32

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        scales = self.scales[input_ids].unsqueeze(-1)  # (B, T, nb, 1)
        packed = self.packed[input_ids]  # (B, T, nb, 16)
        low = (packed & 0x0F).to(scales.dtype) - 8  # weights 0..15 of each block
        high = (packed >> 4).to(scales.dtype) - 8  # weights 16..31
        return (torch.cat([low, high], dim=-1) * scales).flatten(-2)  # (B, T, C)

    def dequantized(self) -> torch.Tensor:
        """The whole table as a dense (rows, C) tensor (for exporting to other runtimes)."""
        return self.forward(torch.arange(self.num_embeddings, device=self.scales.device))
