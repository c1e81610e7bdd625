"""The sense logic on vectors alone: disambiguation against labelled examples, and sense
induction by clustering. No model, no I/O: numpy in, numbers out.

Why centring: contextual vectors of one word are all alike (they share the word's identity,
and the space is anisotropic), so raw cosines between any two occurrences are high and
differ little. Subtracting the word's own mean vector (over the examples, or over a
corpus's occurrences) removes what all occurrences share and leaves what the context adds:
the sense.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from embedsense.server.senses.errors import Abandoned

# A word is represented by its own contextual vector and, at this weight, the mean vector of
# its sentence (both unit length, side by side). The word's vector carries the sense; the
# sentence's adds the topic, which settles cases the word's vector leaves close (measured on
# tests/data/senses_eval.json: 91.6 % -> 94.4 % with the last layer, README).
CONTEXT_WEIGHT = 2.0

# Probabilities are a softmax over the per-sense cosines divided by this temperature. On
# centred vectors the cosines of right and wrong senses typically differ by 0.2-0.6; at 0.1
# a margin of 0.2 reads as ~88 %, one of 0.5 as ~99 %. The same temperature on every call
# makes scores comparable across calls.
TEMPERATURE = 0.1

# Sense induction's bound: more senses than this is not a word's senses but noise, and each
# candidate k costs a clustering.
MAX_SENSES = 20


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def features(
    words: np.ndarray, contexts: np.ndarray, context_weight: float = CONTEXT_WEIGHT
) -> np.ndarray:
    """(n, 2 * dim) unit rows: each word's unit vector and, weighted by `context_weight`, its
    sentence's unit vector, side by side; (n, dim) unit word vectors when the weight is 0."""
    if context_weight == 0:
        return unit(np.asarray(words, dtype=np.float32))
    return unit(np.concatenate([unit(words), context_weight * unit(contexts)], axis=-1))


@dataclass
class Decision:
    label: str
    probabilities: dict[str, float]  # label -> probability, summing to 1
    similarities: dict[str, float]  # label -> cosine to the sense's prototype
    nearest: list[tuple[str, int, float]]  # (label, example index, cosine), best first


def disambiguate(
    target: np.ndarray,
    examples: dict[str, np.ndarray],
    centre: bool = True,
    temperature: float = TEMPERATURE,
    n_nearest: int = 3,
) -> Decision:
    """Which sense `target` (dim,) has, given each sense's example vectors (n_i, dim).

    Each sense is represented by its prototype (the mean of its unit example vectors);
    the target's cosine to each prototype is its similarity to that sense.
    """
    labels = list(examples)
    mean = np.concatenate([examples[label] for label in labels]).mean(axis=0)
    shift = mean if centre else np.zeros_like(mean)
    t = unit(target - shift)
    unit_examples = {label: unit(examples[label] - shift) for label in labels}
    prototypes = np.stack([unit(unit_examples[label].mean(axis=0)) for label in labels])
    similarities = prototypes @ t
    logits = similarities / temperature
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    nearest = sorted(
        ((label, i, float(cos)) for label in labels
         for i, cos in enumerate(unit_examples[label] @ t)),
        key=lambda item: -item[2],
    )[:n_nearest]  # fmt: skip
    best = labels[int(np.argmax(similarities))]
    return Decision(
        label=best,
        probabilities={label: float(p) for label, p in zip(labels, probabilities, strict=True)},
        similarities={label: float(s) for label, s in zip(labels, similarities, strict=True)},
        nearest=nearest,
    )


def rank_by_sense(query: np.ndarray, candidates: np.ndarray, centre: bool = True) -> np.ndarray:
    """Cosines of the candidates (n, dim) to the query (dim,), after centring both on the
    candidates' mean (the word's mean over the corpus occurrences)."""
    shift = candidates.mean(axis=0) if centre and len(candidates) > 1 else 0.0
    return unit(candidates - shift) @ unit(query - shift)


def rank_occurrences(
    query_word: np.ndarray,
    query_context: np.ndarray,
    words: np.ndarray,
    contexts: np.ndarray,
    owner: np.ndarray,
    context_weight: float = CONTEXT_WEIGHT,
) -> np.ndarray:
    """rank_by_sense(features(query)[0], features(words, contexts[owner])): the occurrences'
    word vectors (n, dim), their sentences' vectors (s, dim), one per sentence, and `owner`
    (n,), each occurrence's sentence. The feature rows (n, 2 * dim), several copies
    of them, and a sentence vector per occurrence are never made: a feature is [u, w c] / s,
    u and c unit, s = sqrt(1 + w^2), so each dot product the centred cosine needs splits
    into one of word vectors and one of sentence vectors (50,000 occurrences of 384 dims:
    82 MiB at the peak in 5,000 sentences, 148 MiB in 50,000, where the rows took 513 MiB;
    tracemalloc)."""
    n, weight2 = len(words), context_weight**2
    scale = 1.0 + weight2  # |[u, w c]|^2
    u, c = unit(np.asarray(words, np.float32)), unit(np.asarray(contexts, np.float32))
    qu, qc = unit(query_word), unit(query_context)
    if n > 1:  # the mean feature, as rank_by_sense centres on it
        mu = u.mean(axis=0)
        mc = np.bincount(owner, minlength=len(c)).astype(np.float32) @ c / n
    else:
        mu, mc = np.zeros_like(qu), np.zeros_like(qc)
    f_q = (u @ qu + weight2 * (c @ qc)[owner]) / scale  # f_i . q
    f_m = (u @ mu + weight2 * (c @ mc)[owner]) / scale  # f_i . m
    m_q = float(mu @ qu + weight2 * (mc @ qc)) / scale
    m_m = float(mu @ mu + weight2 * (mc @ mc)) / scale
    f_norm = np.sqrt(np.maximum(1.0 - 2.0 * f_m + m_m, 0.0))  # |f_i - m|; |f_i| = 1
    q_norm = np.sqrt(max(1.0 - 2.0 * m_q + m_m, 0.0))  # |q - m|
    return (f_q - f_m - m_q + m_m) / (np.maximum(f_norm, 1e-12) * max(q_norm, 1e-12))


@dataclass
class Clustering:
    k: int
    labels: np.ndarray  # (n,) cluster of each occurrence
    centrality: np.ndarray  # (n,) cosine of each occurrence to its cluster's centroid
    silhouette: float  # mean silhouette (cosine distance); 0.0 when k == 1


def induce(
    vectors: np.ndarray,
    k: int | None = None,
    max_k: int = 6,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> Clustering:
    """Cluster occurrence vectors (n, dim) into senses: spherical k-means on centred unit
    vectors; without k, the k in 2..max_k with the best mean silhouette. k and max_k are at
    most MAX_SENSES (ValueError beyond). Abandoned between two k once `stop` is set."""
    for name, value in (("k", k), ("max_k", max_k)):
        if value is not None and not 1 <= value <= MAX_SENSES:
            raise ValueError(f"{name} is {value}; it must be within 1-{MAX_SENSES}")
    centred = vectors - vectors.mean(axis=0)
    x = unit(centred)
    n = len(x)
    # One vector, or one up to rounding: centring leaves nothing, or noise, to cluster on.
    if n == 1 or (k in (None, 1) and _alike(vectors, centred)):
        return _cluster(unit(vectors), 1, seed)
    if k is not None:
        return _cluster(x, min(k, n), seed)
    best: Clustering | None = None
    for candidate in range(2, min(max_k, n - 1) + 1):
        if stop is not None and stop.is_set():
            raise Abandoned(f"induction at k = {candidate}")
        result = _cluster(x, candidate, seed)
        if best is None or result.silhouette > best.silhouette:
            best = result
    return best if best is not None else _cluster(x, 1, seed)


def _alike(vectors: np.ndarray, centred: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Whether the occurrences are one vector up to rounding (the same sentence stored
    several times): unit vectors of what centring leaves would be noise to split on."""
    scale = float(np.linalg.norm(vectors, axis=1).max(initial=0.0))
    return float(np.linalg.norm(centred, axis=1).max(initial=0.0)) <= tolerance * max(scale, 1e-12)


def _cluster(x: np.ndarray, k: int, seed: int, iterations: int = 50) -> Clustering:
    rng = np.random.default_rng(seed)
    # k-means++ seeding on cosine distance, then Lloyd's iterations on the sphere.
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = 1 - np.max(np.stack(centroids) @ x.T, axis=0)
        weights = np.maximum(distance, 0) ** 2
        choice = rng.choice(len(x), p=weights / weights.sum()) if weights.sum() > 0 else 0
        centroids.append(x[choice])
    c = np.stack(centroids)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iterations):
        new_labels = np.argmax(x @ c.T, axis=1)
        if _ > 0 and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        c = np.stack([unit(x[labels == j].mean(axis=0)) if (labels == j).any() else c[j]
                      for j in range(k)])  # fmt: skip
    centrality = np.einsum("nd,nd->n", x, c[labels])
    return Clustering(k, labels, centrality, _silhouette(x, labels) if k > 1 else 0.0)


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette on cosine distance of unit rows: (b - a) / max(a, b) per point, where a
    is its mean distance to its own cluster and b to the nearest other one; 0 for singletons.
    Exact, in O(n * k) memory: the n x n distance matrix (1.6 GB for 20,000 occurrences) is
    never formed, because a sum of cosine distances to a cluster is its size minus one dot
    product with the cluster's summed vector."""
    clusters, members = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        return 0.0
    one_hot = np.eye(len(clusters), dtype=x.dtype)[members]  # (n, k)
    sizes = one_hot.sum(axis=0)  # (k,)
    # Summed distance from each point to each cluster: sum_j (1 - x_i . x_j), without n x n.
    sums = sizes[None, :] - x @ (x.T @ one_hot)  # (n, k)
    own = sizes[members]
    a = sums[np.arange(len(x)), members] / np.maximum(own - 1, 1)
    others = sums / sizes[None, :]
    others[np.arange(len(x)), members] = np.inf
    b = others.min(axis=1)
    scores = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(scores.mean())
