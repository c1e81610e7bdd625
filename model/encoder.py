"""A BERT-family transformer encoder, written out so it can be read top to bottom.

    token ids ─► Embeddings (word + position + token type, LayerNorm)
              ─► Layer × N:  x = LN(x + SelfAttention(x))     post-LN residual blocks,
                             x = LN(x + FeedForward(x))       as in BERT and XLM-R
              ─► hidden states (B, T, C)

Shapes use B = batch, T = tokens, C = hidden size, nh = heads, hs = C / nh, and N = the
number of real (unpadded) tokens in the batch. Only attention needs a padded grid; every
per-token step (projections, feed-forward, LayerNorm) runs on the N real tokens packed
together, so padding costs no compute there (see `Packing`). Attention can also run on
rows grouped by length, each group on a grid of its own: less padding where it does cost.
There is no dropout and no training path: the encoder only serves inference, and every
checkpoint we load (BERT, XLM-R, multilingual-e5) fits this one post-LayerNorm design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512  # rows in the position table
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # XLM-R checkpoints number positions from pad_token_id + 1 (a fairseq heritage) and keep
    # the rows below it unused; BERT and multilingual-e5-small start at 0.
    positions_after_pad: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_tokens(self) -> int:
        """Longest input (special tokens included) the position table can number."""
        offset = self.pad_token_id + 1 if self.positions_after_pad else 0
        return self.max_positions - offset


# Shapes of the models we serve; the checkpoint's own config.json wins when there is one.
BERT_BASE_CHINESE = EncoderConfig(vocab_size=21128, pad_token_id=0)
MULTILINGUAL_E5_SMALL = EncoderConfig(
    vocab_size=250037, hidden_size=384, intermediate_size=1536, pad_token_id=1
)
MULTILINGUAL_E5_BASE = EncoderConfig(
    vocab_size=250002, max_positions=514, type_vocab_size=1, layer_norm_eps=1e-5,
    pad_token_id=1, positions_after_pad=True,
)  # fmt: skip


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, C); zeros at padded positions
    # Embedding output followed by every layer's output: num_layers + 1 tensors of (B, T, C).
    hidden_states: tuple[torch.Tensor, ...] | None = None
    # One (B, nh, T, T) tensor of attention probabilities per layer; rows sum to 1 and
    # masked (padding) keys get exactly 0.
    attentions: tuple[torch.Tensor, ...] | None = field(default=None)


def _table(rows: int, dim: int) -> nn.Embedding:
    # Weights always come from a checkpoint (see `checkpoint`), so start from zeros rather
    # than a random normal: cheaper, and deterministic if a weight is ever left unloaded.
    return nn.Embedding(rows, dim, _weight=torch.zeros(rows, dim))


class Embeddings(nn.Module):
    """Each token starts as the sum of what it is, where it is, and which segment it is in."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word: nn.Module = _table(cfg.vocab_size, cfg.hidden_size)
        self.position = _table(cfg.max_positions, cfg.hidden_size)
        self.token_type = _table(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        T = attention_mask.shape[1]
        if not self.cfg.positions_after_pad:
            return torch.arange(T, device=attention_mask.device).unsqueeze(0)  # (1, T)
        # Real tokens count up from pad_id + 1, padding sits at pad_id (as XLM-R was trained).
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + self.cfg.pad_token_id  # (B, T)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word(input_ids)
            + self.position(self.position_ids(attention_mask))
            + self.token_type(token_type_ids)
        )  # (B, T, C)
        return self.norm(x)


GROUPING_MIN_SAVING = 0.75  # group rows for attention only below this share of the cost


class Packing:
    """Where the real tokens of a padded (B, T) batch sit, to move between the padded grid
    (B, T, ·) and the packed rows (N, ·) everything but attention works on."""

    def __init__(self, attention_mask: torch.Tensor, attention_groups: int = 1) -> None:
        self.batch, self.length = attention_mask.shape
        real = attention_mask.reshape(-1).bool()
        # Without padding, packing is a free reshape; otherwise remember the real rows.
        self.index = None if bool(real.all()) else real.nonzero().squeeze(1)  # (N,)
        self.groups = self._attention_grids(attention_mask, attention_groups)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.batch * self.length, -1)  # (B*T, ·)
        return rows if self.index is None else rows.index_select(0, self.index)  # (N, ·)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is not None:  # padded positions come back as zeros
            x = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy_(0, self.index, x)
        return x.view(self.batch, self.length, -1)  # (B, T, ·)

    def _attention_grids(self, mask: torch.Tensor, groups: int) -> list[AttentionGrid]:
        """The grids attention runs on. One: the batch's own (B, T) grid, rows in order
        (what attention maps are reported on). More: rows sorted by length and cut into that
        many groups, each padded only to its own longest row. Attention's cost grows with
        rows × padded length², so on mixed lengths grouping saves much of it (measured on 2
        CPU cores, e5-small, batches of 32 in arrival order: the whole forward 19 % faster);
        on lengths already alike it saves nothing and costs gathers, so it is used only when
        that estimate falls by a quarter or more."""
        whole = AttentionGrid(None, self.index, self.batch, self.length, mask)
        if groups <= 1 or self.index is None:
            return [whole]
        lengths = mask.sum(1)  # (B,)
        chunks = torch.argsort(lengths, descending=True).chunk(min(groups, self.batch))
        longest = [int(lengths[rows[0]]) for rows in chunks]
        grouped_cost = sum(len(rows) * T * T for rows, T in zip(chunks, longest, strict=True))
        if grouped_cost > GROUPING_MIN_SAVING * self.batch * self.length**2:
            return [whole]
        starts = torch.cumsum(lengths, 0) - lengths  # each row's first packed position
        grids = []
        for rows, T in zip(chunks, longest, strict=True):
            grid_mask = torch.arange(T, device=mask.device) < lengths[rows, None]  # (b, T)
            cells = grid_mask.reshape(-1).nonzero().squeeze(1)  # real cells, row by row
            column = torch.arange(T, device=mask.device).expand(len(rows), T)[grid_mask]
            packed = starts[rows, None].expand(len(rows), T)[grid_mask] + column
            grids.append(AttentionGrid(packed, cells, len(rows), T, grid_mask))
        return grids


class AttentionGrid:
    """Some rows of a batch on a padded grid of their own, for attention.

    `packed`: which packed rows fill the grid (None: all N, in order); `cells`: where they
    sit in the flattened (rows × T) grid (None: every cell, no padding)."""

    def __init__(
        self,
        packed: torch.Tensor | None,
        cells: torch.Tensor | None,
        rows: int,
        length: int,
        mask: torch.Tensor,
    ) -> None:
        self.packed, self.cells, self.rows, self.length = packed, cells, rows, length
        self.mask = mask  # (rows, T), 1/True for real tokens

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        # Padding keys get a large negative score so softmax gives them zero weight. The
        # dtype's minimum rather than -inf keeps a fully padded row finite instead of NaN.
        bias = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
        bias.masked_fill_(self.mask == 0, torch.finfo(dtype).min)
        return bias[:, None, None, :]  # (rows, 1, 1, T): broadcast over heads and queries

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Packed rows (N, ·) -> this grid (rows, T, ·), zeros at padding."""
        mine = x if self.packed is None else x.index_select(0, self.packed)
        if self.cells is not None:
            grid = mine.new_zeros(self.rows * self.length, x.shape[-1])
            mine = grid.index_copy_(0, self.cells, mine)
        return mine.view(self.rows, self.length, -1)

    def real_cells(self, grid: torch.Tensor) -> torch.Tensor:
        """This grid's real cells (rows, T, ·) -> (n, ·), in the order `packed` names."""
        flat = grid.reshape(self.rows * self.length, -1)
        return flat if self.cells is None else flat.index_select(0, self.cells)


class SelfAttention(nn.Module):
    """Multi-head self-attention: every token gathers information from every other token."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_size = cfg.head_size
        # Query, key and value projections for all heads as one matrix: one matmul instead
        # of three. The checkpoint's separate q/k/v weights are stacked at load time.
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.output = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        packing: Packing,
        biases: list[torch.Tensor],
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (N, C) packed real tokens -> (N, C), and (B, nh, T, T) probs if asked (then
        `packing` has one grid, the batch's own)."""
        qkv = self.qkv(x)  # (N, 3C)
        if len(packing.groups) == 1:  # the batch's own grid: its real cells are x's rows
            grid = packing.groups[0]
            y, probs = self._attend(grid.gather(qkv), biases[0], return_attention)
            return self.output(grid.real_cells(y)), probs  # (N, C)
        # (N, C): each grid's result lands in its packed rows, in attention's dtype (bf16
        # under a CPU's autocast, where x stays fp32)
        mixed = qkv.new_empty(x.shape)
        for grid, bias in zip(packing.groups, biases, strict=True):
            y, _ = self._attend(grid.gather(qkv), bias, return_attention=False)
            mixed.index_copy_(0, grid.packed, grid.real_cells(y))
        return self.output(mixed), None  # (N, C)

    def _attend(
        self, qkv: torch.Tensor, bias: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """qkv: (B, T, 3C) on a padded grid -> (B, T, C), and probs if asked."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.split(C, dim=2)  # 3 × (B, T, C)
        # Split the channels into heads: each head attends in its own hs-dim subspace.
        q = q.view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)

        probs = None
        if return_attention:
            # The plain path: how strongly each query token matches each key token ...
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, nh, T, T)
            probs = torch.softmax(scores + bias, dim=-1)  # rows sum to 1
            # ... then a weighted average of the value vectors.
            y = probs @ v  # (B, nh, T, hs)
        else:
            # The fast path computes the same thing in a fused kernel without keeping probs.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, T, hs)
        # Re-assemble the heads side by side; the caller mixes them (output projection).
        return y.transpose(1, 2).reshape(B, T, C), probs  # (B, T, C)


class FeedForward(nn.Module):
    """Per-token two-layer MLP: widen, exact (erf) GELU, project back."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # (N, C)


class Layer(nn.Module):
    """One transformer block, post-LayerNorm: add the sub-layer's output, then normalize."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.output_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        packing: Packing,
        biases: list[torch.Tensor],
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (N, C) packed real tokens -> (N, C)."""
        attended, probs = self.attention(x, packing, biases, return_attention)
        x = self.attention_norm(x + attended)
        x = self.output_norm(x + self.feed_forward(x))
        return x, probs


class Encoder(nn.Module):
    """Token ids -> contextual token vectors, optionally with every layer's states and maps."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        # Grids attention runs on for a batch of mixed lengths (see Packing): the runner
        # sets it for its device; attention maps are always reported on the batch's grid.
        self.attention_groups = 1

    @property
    def device(self) -> torch.device:
        return self.embeddings.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.norm.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """input_ids and attention_mask are (B, T); mask is 1 for real tokens, 0 for padding."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        groups = 1 if output_attentions else self.attention_groups
        packing = Packing(attention_mask, groups)
        embedded = self.embeddings(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        x = packing.pack(embedded)  # (N, C)
        biases = [grid.bias(x.dtype) for grid in packing.groups]  # made once, used per layer

        hidden_states = [packing.unpack(x)] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, probs = layer(x, packing, biases, return_attention=output_attentions)
            if hidden_states is not None:
                hidden_states.append(packing.unpack(x))
            if attentions is not None:
                attentions.append(probs)
        return EncoderOutput(
            last_hidden_state=hidden_states[-1] if hidden_states else packing.unpack(x),
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
