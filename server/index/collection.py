"""One collection: its documents in the store, its vectors in a FAISS index kept in step.

Writes go to the store first (committed, fsynced), then to the in-memory index; a crash in
between loses nothing, because opening a collection catches its index up from the store.

What a search reads is one `Generation` (index, label -> id map, live set, and the store's
label numbering they are in), swapped in whole when a rebuild installs a new one. Searches
share a read lock on it, and the short in-memory part of a write takes the write lock, so a
search never sees an index in the middle of a change. Rebuilds (training, compaction) and
snapshots run in the background (optimizer.py), off the write path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsense.server.index import optimizer
from embedsense.server.index.errors import InvalidArgument
from embedsense.server.index.faiss_index import (
    LiveSet,
    new_index,
    read_snapshot,
    training_size,
    write_snapshot,
)
from embedsense.server.index.filters import compile_filter
from embedsense.server.index.generation import Generation, build, catch_up
from embedsense.server.index.hits import Hit, assemble_hits
from embedsense.server.index.search_plan import search_generation
from embedsense.server.index.store import CollectionRow, Document, Store
from embedsense.server.index.validation import check_model, checked_query, validated

log = logging.getLogger(__name__)

FILTER_CACHE_ENTRIES = 64


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
        self._rebuilding = threading.Lock()  # one rebuild at a time (optimizer or reindex)
        self._swap = threading.Lock()  # held while the store is renumbered and installed
        self._lock = _ReadWriteLock()
        self._gen = Generation.empty(row)
        self._changes_since_snapshot = 0
        self._writes = 0  # writes applied: what a cached filter result was read at
        # Recent filters' matching labels, valid while no write lands (filters repeat: a
        # tenant, a language); the SQL scan over every document's metadata is the cost.
        self._filters: OrderedDict[tuple, tuple[int, int, np.ndarray]] = OrderedDict()
        self._filters_lock = threading.Lock()
        self.optimizer = optimizer.Optimizer(row.name, self._maintain)

    # ------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def dim(self) -> int:
        return self.row.dim

    @property
    def store_tokens(self) -> bool:
        return self.row.store_tokens

    @property
    def ef_search(self) -> int:
        return int(self.row.options.get("ef_search", 64))

    @property
    def nprobe(self) -> int:
        return int(self.row.options.get("nprobe", 16))

    @property
    def faiss_index(self) -> faiss.Index:
        """The index searches use now (for benchmarks and diagnostics: do not modify it)."""
        return self._gen.index

    def _training_size(self) -> int:
        return _training_size(self.row.index_spec, self.dim, self.row.metric)

    # ------------------------------------------------------------ opening and rebuilding

    def open(self) -> Collection:
        """Load the snapshot when it is current and catch it up from the store, or rebuild."""
        started = time.perf_counter()
        staged = self._training_size() > 0
        index = read_snapshot(self._snapshot_path(staged))
        if index is None and staged:  # trained since the last open?
            index = read_snapshot(self._snapshot_path(False))
            staged = index is None
        if index is None or index.ntotal > self.row.next_label or index.d != self.dim:
            if index is not None:
                log.warning("%s: snapshot does not match the store; rebuilding", self.name)
            self.rebuild()
        else:
            behind = self.row.next_label - index.ntotal
            if behind:
                log.info("%s: catching up %d labels from the store", self.name, behind)
            self._install(self._loaded(index, trained=not staged))
        log.info(
            "%s: %d documents ready in %.2f s", self.name, self._gen.live.count,
            time.perf_counter() - started,
        )  # fmt: skip
        self.optimizer.poke()  # a crash may have left a rebuild due
        return self

    def _snapshot_path(self, staged: bool) -> Path:
        # The spec is in the name: a snapshot of another spec is never mistaken for current.
        spec = hashlib.sha1(self.row.index_spec.encode()).hexdigest()[:10]
        kind = "staged" if staged else "index"
        return self.snapshot_dir / f"{self.row.generation}.{kind}.{spec}.faiss"

    def _loaded(self, index: faiss.Index, trained: bool) -> Generation:
        """A snapshot brought up to the store: the labels written after it added (a dead one
        as a zero vector, to keep positions), and the store's live labels."""
        expected = index.ntotal
        for labels, _, vectors in self.store.vectors_from(self.name, expected, self.dim):
            # Runs of consecutive labels go in one call each; the gaps between them are dead.
            for run in np.split(np.arange(len(labels)), np.flatnonzero(np.diff(labels) > 1) + 1):
                _add_zeros(index, int(labels[run[0]]) - expected, self.dim)
                index.add(vectors[run[0] : run[-1] + 1])
                expected = int(labels[run[-1]]) + 1
        _add_zeros(index, self.row.next_label - expected, self.dim)
        ids: list[str | None] = [None] * index.ntotal
        live = LiveSet()
        labels = []
        for label, doc_id in self.store.live(self.name):
            ids[label] = doc_id
            labels.append(label)
        live.add(labels)
        return Generation(self.row.generation, index, ids, live, trained)

    def _install(self, gen: Generation) -> None:
        with self._lock.writing():
            self._gen = gen

    def rebuild(self) -> None:
        """A fresh index from the store: trained when the spec needs it and there are enough
        vectors, dead vectors left out. Writes and searches go on while it builds; the new
        generation is installed at once, with the writes made meanwhile; then a snapshot."""
        with self._rebuilding:
            with self._writer:
                upto = self.row.next_label
            built = build(self.store, self.row, self._training_size(), upto)
            with self._writer, self._swap:
                self._install(catch_up(self.store, self.row, built))
            self.snapshot()

    def _maintain(self) -> None:
        """The optimizer's work: whatever `next_job` says is due, until nothing is (a few
        rounds at most: writes during a rebuild can make another one due)."""
        for _ in range(4):
            gen = self._gen
            job = self._due(gen)
            if job is None:
                return
            log.info("%s: %s (%d of %d vectors live)", self.name, job.value, gen.live.count,
                     gen.index.ntotal)  # fmt: skip
            self.rebuild() if job is optimizer.Job.REBUILD else self.snapshot()

    def wait_until_optimized(self, timeout: float | None = None) -> bool:
        """Block until the background rebuilds and snapshots that are due are done."""
        return self.optimizer.wait(timeout)

    def snapshot(self) -> None:
        """Write the index to disk (atomically), and drop the snapshots it replaces."""
        with self._lock.reading():
            gen = self._gen
            path = self._snapshot_path(not gen.trained)
            write_snapshot(gen.index, path)
            self._changes_since_snapshot = 0
        for old in self.snapshot_dir.glob("*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the maintenance that runs, then snapshot (the next start loads it)."""
        self.optimizer.close()
        self.snapshot()

    # ------------------------------------------------------------ writes

    def check_model(self, model: str | None) -> None:
        check_model(self.row, model)

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        """Insert or replace documents; returns their ids. Durable when it returns."""
        self.check_model(model)
        docs = [validated(self.row, doc) for doc in docs]
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("the same id twice in one upsert")
        if not docs:
            return []
        with self._writer:
            labels, replaced = self.store.upsert(self.name, docs)
            with self._lock.writing():
                gen = self._gen
                gen.append(np.stack([doc.vector for doc in docs]), ids, labels)
                gen.live.discard([label for label in replaced if label is not None])
            self.row.next_label = labels[-1] + 1
            self._after_write(len(docs))
        return ids

    def delete(self, ids: Sequence[str]) -> int:
        """Delete by id; how many existed. Durable when it returns."""
        with self._writer:
            dead = self.store.delete(self.name, list(ids))
            with self._lock.writing():
                self._gen.live.discard(dead)
            self._after_write(len(dead))
        return len(dead)

    def _after_write(self, changes: int) -> None:
        self._writes += 1
        self._changes_since_snapshot += changes
        if self._due(self._gen) is not None:
            self.optimizer.poke()

    def _due(self, gen: Generation) -> optimizer.Job | None:
        """The maintenance the index wants now (optimizer.next_job)."""
        return optimizer.next_job(
            gen.live.count, gen.index.ntotal, gen.trained,
            0 if gen.trained else self._training_size(), self._changes_since_snapshot,
        )  # fmt: skip

    def reindex(self, index_spec: str, options: Mapping[str, Any] | None = None) -> None:
        """Switch to another index spec (or search options), rebuilt from the store."""
        new_index(index_spec, self.dim, self.row.metric)  # reject a bad spec before anything
        merged = {**self.row.options, **(options or {})}
        with self._rebuilding, self._writer:
            self.store.set_index_spec(self.name, index_spec, merged)
            self.row.index_spec, self.row.options = index_spec, merged
        self.rebuild()

    # ------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        found = self.store.get(self.name, list(ids), self.dim)
        return [found.get(doc_id) for doc_id in ids]

    def count(self) -> int:
        return self._gen.live.count

    def index_vectors(self) -> int:
        return self._gen.index.ntotal

    def ids_containing(self, word: str, limit: int) -> list[str]:
        return self.store.ids_containing(self.name, word, limit)

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
        nprobe (IVF) override the collection's defaults for this call. with_documents=False:
        ids and scores only, as the index found them.
        """
        queries = checked_query(self.row, queries, k, model)
        condition = compile_filter(where) if where else None
        while True:
            gen = self._gen
            matching = None
            if condition is not None:
                number, matching = self._matching(condition)
                if number != gen.number:  # renumbered, and the new generation not yet in
                    with self._swap:
                        continue
            with self._lock.reading():
                if self._gen is not gen:  # swapped meanwhile: the filter's labels are stale
                    continue
                labels, scores = search_generation(
                    gen, queries, k, matching, ef_search or self.ef_search,
                    nprobe or self.nprobe,
                )  # fmt: skip
                ids = [[gen.ids[label] for label in row if label >= 0] for row in labels]
            break
        docs = None
        if with_documents:
            wanted = sorted({doc_id for row in ids for doc_id in row})
            docs = self.store.get(self.name, wanted, self.dim)
        return assemble_hits(ids, scores, docs)

    def _matching(self, condition: tuple[str, list[Any]]) -> tuple[int, np.ndarray]:
        """The labels a filter matches and their numbering, from the cache while no write
        or renumbering came since, else from the store."""
        key = (condition[0], tuple(map(repr, condition[1])))
        writes = self._writes
        with self._filters_lock:
            cached = self._filters.get(key)
        if cached is not None and cached[0] == writes and cached[1] == self._gen.number:
            return cached[1], cached[2]
        number, labels = self.store.labels_where(self.name, *condition)
        with self._filters_lock:
            self._filters[key] = (writes, number, labels)
            self._filters.move_to_end(key)
            while len(self._filters) > FILTER_CACHE_ENTRIES:
                self._filters.popitem(last=False)
        return number, labels

    def info(self) -> CollectionInfo:
        tokens, token_bytes = self.store.token_stats(self.name) if self.row.store_tokens else (0, 0)
        row, gen = self.row, self._gen
        return CollectionInfo(
            name=row.name, model=row.model, dim=row.dim, metric=row.metric,
            index_spec=row.index_spec, store_tokens=row.store_tokens, count=gen.live.count,
            created_at=row.created_at, trained=gen.trained,
            training_size=self._training_size(), ef_search=self.ef_search, nprobe=self.nprobe,
            index_vectors=gen.index.ntotal, tokens=tokens,
            bytes_per_token=token_bytes / tokens if tokens else 0.0, options=dict(row.options),
        )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _training_size(spec: str, dim: int, metric: str) -> int:
    """Cached: it builds an empty index to ask, and writes ask on every call while untrained."""
    return training_size(new_index(spec, dim, metric), spec)


def _add_zeros(index: faiss.Index, n: int, dim: int, chunk: int = 65_536) -> None:
    for start in range(0, max(n, 0), chunk):
        index.add(np.zeros((min(chunk, n - start), dim), dtype=np.float32))
