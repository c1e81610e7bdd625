"""Which layers and heads of a long text fit in one Explain response (layers x heads x T x T
attention values at most): a pure function, so the CLI can ask for what fits and the page
can say what it left out."""

from __future__ import annotations


def fit(tokens: int, num_layers: int, num_heads: int, bound: int) -> tuple[list[int], list[int]]:
    """(layers, heads) to ask for: every head of as many layers as fit, the last ones (where
    the word's context has been mixed in most); when not even one layer fits, the first heads
    of the last layer. A ValueError when not one head of one layer fits."""
    per_map = tokens * tokens
    if per_map > bound:
        raise ValueError(
            f"one attention map of {tokens} tokens is {per_map} values; a response holds at "
            f"most {bound}: explain a shorter part of the text"
        )
    layers = min(num_layers, bound // (num_heads * per_map))
    if layers >= 1:
        return list(range(num_layers - layers + 1, num_layers + 1)), list(range(num_heads))
    return [num_layers], list(range(min(num_heads, bound // per_map)))
