"""One collection: its documents in the store, its vectors in a FAISS index kept in step.

Writes go to the store first (committed, fsynced), then to the in-memory index; a crash in
between loses nothing, because opening a collection catches its index up from the store.
Searches share a read lock and run concurrently with each other; the short in-memory part
of a write takes the write lock, so a search never sees an index in the middle of a change.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsense.server.index.errors import DimensionMismatch, InvalidArgument, ModelMismatch
from embedsense.server.index.faiss_index import (
    LiveSet,
    exact_view,
    new_index,
    nlist,
    popcount,
    read_snapshot,
    search_parameters,
    training_size,
    write_snapshot,
)
from embedsense.server.index.filters import compile_filter
from embedsense.server.index.store import CollectionRow, Document, Store

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
# Filters that leave at most this share of the collection are searched exhaustively over
# the matching vectors: a graph walk (HNSW) or a few IVF lists would find too few of them.
SELECTIVE_FILTER_SHARE = 0.02
# Dead vectors (deleted or replaced) beyond this share of the index trigger a compaction.
COMPACT_DEAD_SHARE = 0.5
COMPACT_MIN_DEAD = 10_000
# A snapshot after this many changes, or as many as the index holds if more, bounds how much
# a start after a crash must catch up, at an amortized cost of at most one more write of
# each vector.
SNAPSHOT_EVERY_CHANGES = 100_000


@dataclass
class Hit:
    id: str
    score: float  # inner product (cosine for "cosine"), or squared L2 distance for "l2"
    text: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class CollectionInfo:
    name: str
    model: str
    dim: int
    metric: str
    index_spec: str
    store_tokens: bool
    count: int
    created_at: float
    trained: bool  # False while a spec that needs training is served by exact search
    training_size: int  # vectors wanted before training (0: the spec needs none)
    ef_search: int
    nprobe: int
    index_vectors: int  # vectors in the FAISS index, dead ones included
    tokens: int = 0  # token vectors stored
    bytes_per_token: float = 0.0  # what storing one token costs (vector, text, offsets)
    options: dict[str, Any] = field(default_factory=dict)


class _ReadWriteLock:
    """Many readers or one writer (searches vs the in-memory part of writes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True  # new readers wait from here: writers do not starve
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class Collection:
    def __init__(self, store: Store, row: CollectionRow, snapshot_dir: Path) -> None:
        self.store = store
        self.row = row
        self.snapshot_dir = snapshot_dir
        self._writer = threading.Lock()  # one write at a time, applied in commit order
        self._lock = _ReadWriteLock()
        self._ids: list[str | None] = []  # label -> document id
        self._live = LiveSet()
        self._index: faiss.Index = new_index("Flat", row.dim, row.metric)
        self._trained = True
        self._changes_since_snapshot = 0

    # ------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def dim(self) -> int:
        return self.row.dim

    @property
    def ef_search(self) -> int:
        return int(self.row.options.get("ef_search", 64))

    @property
    def nprobe(self) -> int:
        return int(self.row.options.get("nprobe", 16))

    @property
    def faiss_index(self) -> faiss.Index:
        """The index searches use now (for benchmarks and diagnostics: do not modify it)."""
        return self._index

    def _training_size(self) -> int:
        return _training_size(self.row.index_spec, self.dim, self.row.metric)

    # ------------------------------------------------------------ opening

    def open(self) -> Collection:
        """Load the snapshot when it is current, catch it up from the store, or rebuild."""
        started = time.perf_counter()
        staged = self._training_size() > 0
        index = read_snapshot(self._snapshot_path(staged))
        if index is None and staged:  # trained since the last open?
            index = read_snapshot(self._snapshot_path(False))
            staged = index is None
        if index is None or index.ntotal > self.row.next_label or index.d != self.dim:
            if index is not None:
                log.warning("%s: snapshot does not match the store; rebuilding", self.name)
            self._rebuild(compact=self.store.count(self.name) < self.row.next_label)
        else:
            behind = self.row.next_label - index.ntotal
            if behind:
                log.info("%s: catching up %d labels from the store", self.name, behind)
            self._fill(index, index.ntotal)
            self._install(index, trained=not staged)
        log.info(
            "%s: %d documents ready in %.2f s", self.name, self._live.count,
            time.perf_counter() - started,
        )  # fmt: skip
        return self

    def _snapshot_path(self, staged: bool) -> Path:
        # The spec is in the name: a snapshot of another spec is never mistaken for current.
        spec = hashlib.sha1(self.row.index_spec.encode()).hexdigest()[:10]
        kind = "staged" if staged else "index"
        return self.snapshot_dir / f"{self.row.generation}.{kind}.{spec}.faiss"

    def _install(self, index: faiss.Index, trained: bool) -> None:
        """Make `index` the one searches use, with the store's live labels."""
        ids: list[str | None] = [None] * index.ntotal
        labels = []
        for label, doc_id in self.store.live(self.name):
            ids[label] = doc_id
            labels.append(label)
        live = LiveSet()
        live.add(labels)
        with self._lock.writing():
            self._index, self._ids, self._live, self._trained = index, ids, live, trained

    def _fill(self, index: faiss.Index, first_label: int) -> None:
        """Add the store's vectors from `first_label` on, in label order; labels that no
        document holds any more get a zero vector (dead, never returned) to keep positions."""
        expected, done = first_label, 0
        for labels, vectors in self.store.vectors_from(self.name, first_label, self.dim):
            # Runs of consecutive labels go in one call each; the gaps between them are dead.
            for run in np.split(np.arange(len(labels)), np.flatnonzero(np.diff(labels) > 1) + 1):
                _add_zeros(index, int(labels[run[0]]) - expected, self.dim)
                index.add(vectors[run[0] : run[-1] + 1])
                expected = int(labels[run[-1]]) + 1
            done += len(labels)
            if done % 100_000 < len(labels):
                log.info("%s: %d vectors added from the store", self.name, done)
        _add_zeros(index, self.row.next_label - expected, self.dim)

    def _rebuild(self, compact: bool) -> None:
        """A fresh index from the store (trained when the spec needs it and there are enough
        vectors), labels renumbered first when compacting; then a snapshot. Searches go on
        with the old index until the new one is installed."""
        started = time.perf_counter()
        if compact:
            self.row.generation = self.store.compact_labels(self.name)
            self.row.next_label = self.store.count(self.name)
        spec, wanted = self.row.index_spec, self._training_size()
        count = self.store.count(self.name)
        trained = wanted == 0 or count >= wanted
        index = new_index(spec if trained else "Flat", self.dim, self.row.metric)
        if wanted and trained:
            size = min(count, max(wanted, 64 * (nlist(index) or 0)))
            log.info("%s: training %s on %d vectors", self.name, spec, size)
            index.train(self.store.sample_vectors(self.name, size, self.dim))
        log.info("%s: building %s from %d stored documents", self.name, spec, count)
        self._fill(index, 0)
        self._install(index, trained)
        log.info("%s: rebuilt in %.1f s", self.name, time.perf_counter() - started)
        self.snapshot()

    def snapshot(self) -> None:
        """Write the index to disk (atomically), and drop the snapshots it replaces."""
        with self._lock.reading():
            path = self._snapshot_path(not self._trained)
            write_snapshot(self._index, path)
            self._changes_since_snapshot = 0
        for old in self.snapshot_dir.glob("*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------ writes

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.row.model:
            raise ModelMismatch(
                f"collection {self.name!r} holds vectors of {self.row.model!r}, "
                f"not {model!r}: vectors of two models are not comparable"
            )

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        """Insert or replace documents; returns their ids. Durable when it returns."""
        self.check_model(model)
        docs = [self._validated(doc) for doc in docs]
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("the same id twice in one upsert")
        if not docs:
            return []
        with self._writer:
            labels, replaced = self.store.upsert(self.name, docs)
            vectors = np.stack([doc.vector for doc in docs])
            with self._lock.writing():
                self._index.add(vectors)
                self._ids.extend(ids)
                self._live.add(labels)
                self._live.discard([label for label in replaced if label is not None])
            self.row.next_label = labels[-1] + 1
            self._after_write(len(docs))
        return ids

    def delete(self, ids: Sequence[str]) -> int:
        """Delete by id; how many existed. Durable when it returns."""
        with self._writer:
            dead = self.store.delete(self.name, list(ids))
            with self._lock.writing():
                self._live.discard(dead)
            self._after_write(len(dead))
        return len(dead)

    def _after_write(self, changes: int) -> None:
        self._changes_since_snapshot += changes
        dead = self._index.ntotal - self._live.count
        wanted = 0 if self._trained else self._training_size()
        if wanted and self._live.count >= wanted:
            log.info("%s: %d vectors, enough to train %s", self.name, self._live.count,
                     self.row.index_spec)  # fmt: skip
            self._rebuild(compact=dead > 0)
        elif dead >= COMPACT_MIN_DEAD and dead > COMPACT_DEAD_SHARE * self._index.ntotal:
            log.info("%s: compacting %d dead vectors", self.name, dead)
            self._rebuild(compact=True)
        elif self._changes_since_snapshot >= max(SNAPSHOT_EVERY_CHANGES, self._index.ntotal):
            self.snapshot()

    def _validated(self, doc: Document) -> Document:
        doc_id = doc.id if doc.id is not None else uuid.uuid4().hex
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"a document id is a string of 1-{MAX_ID_LENGTH} characters")
        if doc.metadata is not None and not isinstance(doc.metadata, Mapping):
            raise InvalidArgument(f"document {doc_id!r}: metadata must be a JSON object")
        vector = self._vector(doc.vector, f"document {doc_id!r}")
        tokens, token_vectors = doc.tokens, doc.token_vectors
        if (tokens is None) != (token_vectors is None):
            raise InvalidArgument(f"document {doc_id!r}: tokens and token vectors go together")
        if tokens is not None:
            if not self.row.store_tokens:
                raise InvalidArgument(
                    f"collection {self.name!r} does not store token vectors "
                    "(create it with store_tokens=True)"
                )
            token_vectors = np.asarray(token_vectors, dtype=np.float32)
            if token_vectors.shape != (len(tokens), self.dim):
                raise DimensionMismatch(
                    f"document {doc_id!r}: token vectors of shape {token_vectors.shape}, "
                    f"expected ({len(tokens)}, {self.dim})"
                )
        return Document(
            text=doc.text,
            vector=vector,
            id=doc_id,
            metadata=dict(doc.metadata or {}),
            tokens=tokens,
            token_vectors=token_vectors,
        )

    def _vector(self, vector: np.ndarray, what: str) -> np.ndarray:
        return self._vectors(np.asarray(vector, dtype=np.float32)[None], what)[0]

    def _vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        """Rows checked (dimension, finite) and, for cosine, L2-normalized; one pass."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(
                f"{what}: a vector of shape {vectors.shape[1:]}; collection {self.name!r} "
                f"holds {self.dim}-dim vectors of {self.row.model!r}"
            )
        if not np.isfinite(vectors).all():
            raise InvalidArgument(f"{what}: a vector has NaN or infinite values")
        if self.row.metric == "cosine":
            norms = np.linalg.norm(vectors, axis=1)
            if not norms.all():
                raise InvalidArgument(f"{what}: a zero vector has no direction (cosine)")
            off = np.abs(norms - 1) > 1e-6  # unit vectors are stored bit for bit as given
            if off.any():
                vectors = vectors.copy()
                vectors[off] /= norms[off, None]
        return np.ascontiguousarray(vectors)

    # ------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        found = self.store.get(self.name, list(ids), self.dim)
        return [found.get(doc_id) for doc_id in ids]

    def count(self) -> int:
        return self._live.count

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        *,
        with_documents: bool = True,
        ef_search: int | None = None,
        nprobe: int | None = None,
        model: str | None = None,
    ) -> list[list[Hit]]:
        """The k nearest live documents for each query vector (one row each), best first.

        `where` filters on metadata inside the search (see filters.py). ef_search (HNSW) and
        nprobe (IVF) override the collection's defaults for this call.
        """
        self.check_model(model)
        queries = np.asarray(queries, dtype=np.float32)
        if not 1 <= k <= 10_000:
            raise InvalidArgument(f"k must be within 1-10000, got {k}")
        queries = self._vectors(queries[None] if queries.ndim == 1 else queries, "query")
        matching = None
        if where:
            condition, params = compile_filter(where)
            matching = self.store.labels_where(self.name, condition, params)
        with self._lock.reading():
            labels, scores = self._search_locked(queries, k, matching, ef_search, nprobe)
            ids = [[self._ids[label] for label in row if label >= 0] for row in labels]
        return self._hits(ids, scores, with_documents)

    def _search_locked(
        self,
        queries: np.ndarray,
        k: int,
        matching: np.ndarray | None,
        ef_search: int | None,
        nprobe: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        index, ef, probes = self._index, ef_search or self.ef_search, nprobe or self.nprobe
        if matching is not None:
            if not len(matching):
                return np.full((len(queries), 0), -1), np.zeros((len(queries), 0))
            selector, bits = self._live.selector(among=self._live.bitmap_of(matching))
            candidates = int(popcount(bits))
            if candidates <= SELECTIVE_FILTER_SHARE * self._live.count:
                index, probes = self._exhaustive(index, probes)
        elif self._live.count < index.ntotal:
            selector, bits = self._live.selector()
            candidates = self._live.count
        else:
            selector = bits = None  # nothing dead: no selector, FAISS's fastest path
            candidates = self._live.count
        scores, labels = index.search(
            queries, k, params=search_parameters(index, selector, ef, probes)
        )
        # A graph walk or a few IVF lists can come back short when the selector rejects
        # most of what they visit; those queries are answered exhaustively instead.
        short = (labels >= 0).sum(axis=1) < min(k, candidates)
        exhaustive, all_lists = self._exhaustive(index, probes)
        if short.any() and (exhaustive is not index or all_lists != probes):
            params = search_parameters(exhaustive, selector, ef, all_lists)
            scores[short], labels[short] = exhaustive.search(queries[short], k, params=params)
        del bits  # the selector read it during the searches
        return labels, scores

    @staticmethod
    def _exhaustive(index: faiss.Index, probes: int) -> tuple[faiss.Index, int]:
        """The same vectors searched exhaustively: HNSW's flat storage, or every IVF list."""
        exact = exact_view(index)
        return (exact, probes) if exact is not None else (index, nlist(index) or probes)

    def _hits(
        self, ids: list[list[str | None]], scores: np.ndarray, with_documents: bool
    ) -> list[list[Hit]]:
        docs: dict[str, Document] = {}
        if with_documents:
            wanted = sorted({doc_id for row in ids for doc_id in row if doc_id is not None})
            docs = self.store.get(self.name, wanted, self.dim)
        results = []
        for row_ids, row_scores in zip(ids, scores, strict=False):
            hits = []
            for doc_id, score in zip(row_ids, row_scores, strict=False):
                if doc_id is None:
                    continue
                if with_documents:
                    doc = docs.get(doc_id)
                    if doc is None:  # deleted while this search ran
                        continue
                    hits.append(Hit(doc_id, float(score), doc.text, doc.metadata))
                else:
                    hits.append(Hit(doc_id, float(score)))
            results.append(hits)
        return results

    def info(self) -> CollectionInfo:
        tokens, token_bytes = self.store.token_stats(self.name) if self.row.store_tokens else (0, 0)
        row = self.row
        return CollectionInfo(
            name=row.name,
            model=row.model,
            dim=row.dim,
            metric=row.metric,
            index_spec=row.index_spec,
            store_tokens=row.store_tokens,
            count=self._live.count,
            created_at=row.created_at,
            trained=self._trained,
            training_size=self._training_size(),
            ef_search=self.ef_search,
            nprobe=self.nprobe,
            index_vectors=self._index.ntotal,
            tokens=tokens,
            bytes_per_token=token_bytes / tokens if tokens else 0.0,
            options=dict(row.options),
        )

    def reindex(self, index_spec: str, options: Mapping[str, Any] | None = None) -> None:
        """Switch to another index spec (or search options), rebuilt from the store."""
        new_index(index_spec, self.dim, self.row.metric)  # reject a bad spec before anything
        merged = {**self.row.options, **(options or {})}
        with self._writer:
            self.store.set_index_spec(self.name, index_spec, merged)
            self.row.index_spec, self.row.options = index_spec, merged
            self._rebuild(compact=self._index.ntotal > self._live.count)


@functools.lru_cache(maxsize=64)
def _training_size(spec: str, dim: int, metric: str) -> int:
    """Cached: it builds an empty index to ask, and writes ask on every call while untrained."""
    return training_size(new_index(spec, dim, metric), spec)


def _add_zeros(index: faiss.Index, n: int, dim: int, chunk: int = 65_536) -> None:
    for start in range(0, max(n, 0), chunk):
        index.add(np.zeros((min(chunk, n - start), dim), dtype=np.float32))
