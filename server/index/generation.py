"""A generation: the index a search reads, with the labels it is numbered in.

Labels are positions in the FAISS index. The store numbers its documents in the same labels,
and a rebuild (training, compaction) renumbers them; a search must never mix the store's
new numbering with an index built in the old one. So the index, its label -> id map and its
live set travel together as one `Generation`, tagged with the store's generation number, and
the collection swaps a whole new one in at once.

Between rebuilds a generation only grows: writes append labels and clear live bits, and
never change what an existing label means. A generation also says which spec it serves, so
that its snapshot is named after what it holds (its numbering and spec), not after what
the collection's settings say by the time the snapshot is written.

A rebuild happens in two steps so that writes go on meanwhile: `build` reads the store up
to a label and makes a fresh (trained, compacted) index off every lock; `catch_up`, under
the collection's writer lock, adds what was written since, renumbers the store to match and
returns the generation to install.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np

from embedsense.server.index.errors import IndexOutOfStep
from embedsense.server.index.faiss_index import LiveSet, new_index, nlist
from embedsense.server.index.store import CollectionRow, Store

log = logging.getLogger(__name__)


@dataclass
class Generation:
    number: int  # the store's label numbering (collections.generation) these labels are in
    index: faiss.Index
    ids: list[str | None]  # label -> document id (None: dead, never returned)
    live: LiveSet
    trained: bool  # False while a spec that needs training is served by a Flat index
    spec: str  # the collection's index spec this generation serves (or stages, untrained)

    @classmethod
    def empty(cls, row: CollectionRow) -> Generation:
        index = new_index("Flat", row.dim, row.metric)
        return cls(row.generation, index, [], LiveSet(), True, row.index_spec)

    def append(self, vectors: np.ndarray, ids: list[str], labels: list[int]) -> None:
        """Add vectors at the next labels (the caller holds the collection's write lock);
        IndexOutOfStep, with nothing added, unless they are the next ones."""
        if labels[0] != self.index.ntotal:
            raise IndexOutOfStep(
                f"labels from {labels[0]} appended to an index of {self.index.ntotal} vectors"
            )
        self.index.add(vectors)
        self.ids.extend(ids)
        self.live.add(labels)


@dataclass
class Built:
    """A fresh index over the store's documents with labels below `upto`, renumbered
    0..n-1 in label order (`old_labels[i]` was the label of new label i)."""

    generation: Generation
    upto: int
    old_labels: np.ndarray


def build(store: Store, row: CollectionRow, training_size: int, upto: int) -> Built:
    """Build off every lock: a new index of `row.index_spec` (trained when it needs it and
    there are enough vectors, else Flat) over the live documents below label `upto`."""
    started = time.perf_counter()
    spec, count = row.index_spec, store.count(row.name)
    trained = training_size == 0 or count >= training_size
    index = new_index(spec if trained else "Flat", row.dim, row.metric)
    if training_size and trained:
        size = min(count, max(training_size, 64 * (nlist(index) or 0)))
        log.info("%s: training %s on %d vectors", row.name, spec, size)
        index.train(store.sample_vectors(row.name, size, row.dim))
    ids: list[str | None] = []
    old_labels = []
    for labels, chunk_ids, vectors in store.vectors_from(row.name, 0, row.dim, below=upto):
        index.add(vectors)
        ids.extend(chunk_ids)
        old_labels.append(labels)
    live = LiveSet()
    live.add(np.arange(len(ids)))
    log.info("%s: built %s over %d documents in %.1f s", row.name, spec if trained else "Flat",
             len(ids), time.perf_counter() - started)  # fmt: skip
    old = np.concatenate(old_labels) if old_labels else np.zeros(0, dtype=np.int64)
    return Built(Generation(row.generation, index, ids, live, trained, spec), upto, old)


def catch_up(store: Store, row: CollectionRow, built: Built) -> Generation:
    """Under the writer lock: bring a built generation up to the store (the writes since
    `build` read it), then renumber the store into its labels. Returns it, ready to install;
    `row` is updated to the new numbering."""
    gen = built.generation
    if gen.number != row.generation:
        raise IndexOutOfStep(f"{row.name}: the store was renumbered while this build read it")
    n_built = len(gen.ids)
    current = np.fromiter((label for label, _ in store.live(row.name)), dtype=np.int64)
    before = current[current < built.upto]
    # A label never comes back once dead, so each document still below `upto` is where the
    # build put it; the built rows whose document died since are dead in the new numbering.
    kept = np.searchsorted(built.old_labels, before)
    if len(before) and not np.array_equal(built.old_labels[np.minimum(kept, n_built - 1)], before):
        raise RuntimeError(f"{row.name}: a document below label {built.upto} is not in the build")
    dead = np.setdiff1d(np.arange(n_built), kept, assume_unique=True)
    gen.live.discard(dead)
    for label in dead:
        gen.ids[label] = None
    newer_old, newer_new = [], []
    for labels, ids, vectors in store.vectors_from(row.name, built.upto, row.dim):
        first = gen.index.ntotal
        gen.append(vectors, ids, list(range(first, first + len(ids))))
        newer_old.append(labels)
        newer_new.append(np.arange(first, first + len(ids)))
    old = np.concatenate([before, *newer_old])
    new = np.concatenate([kept, *newer_new])
    if np.array_equal(old, new) and gen.index.ntotal == row.next_label:
        return gen  # the numbering did not change: nothing to renumber
    row.generation = store.relabel(row.name, old, new, gen.index.ntotal)
    row.next_label = gen.index.ntotal
    gen.number = row.generation
    return gen
