"""One collection: its documents in the store, its vectors in a FAISS index kept in step.

Writes go to the store first (committed, fsynced), then to the in-memory index; a crash in
between loses nothing, because opening a collection catches its index up from the store.

What a search reads is one `Generation` (index, label -> id map, live set, and the store's
label numbering they are in), swapped in whole when a rebuild installs a new one. Searches
share a read lock on it, and the short in-memory part of a write takes the write lock, so a
search never sees an index in the middle of a change. Rebuilds (training, compaction) and
snapshots run in the background (optimizer.py), off the write path; a snapshot holds the
read lock only while it copies the index, not while the copy is written and fsynced.

The store knows a collection by its name, and a dropped collection's name can be taken by a
new one at once. So a `Collection` object, once dropped, never touches the store or its
snapshot folder again: every write, rebuild and snapshot checks under the lock the drop
takes, and raises CollectionNotFound instead (a write that was in flight when its collection
was dropped fails; it never lands in the new one).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsense.server.index import optimizer
from embedsense.server.index.errors import CollectionNotFound, IndexOutOfStep, InvalidArgument
from embedsense.server.index.faiss_index import (
    LiveSet,
    bitmap,
    new_index,
    read_snapshot,
    serialized,
    training_size,
    write_snapshot,
)
from embedsense.server.index.filters import compile_filter, parse, required_filter
from embedsense.server.index.generation import Generation, build, catch_up
from embedsense.server.index.hits import Hit, assemble_hits, within
from embedsense.server.index.locks import ReadWriteLock
from embedsense.server.index.search_plan import search_generation
from embedsense.server.index.specs import check_spec
from embedsense.server.index.store import CollectionRow, Document, Store
from embedsense.server.index.validation import (
    check_model,
    checked_patch,
    checked_query,
    checked_scroll,
    checked_threshold,
    patched,
    validated,
)

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


class Collection:
    def __init__(self, store: Store, row: CollectionRow, snapshot_dir: Path) -> None:
        self.store = store
        self.row = row
        self.snapshot_dir = snapshot_dir
        self._writer = threading.Lock()  # one write at a time, applied in commit order
        self._rebuilding = threading.Lock()  # one rebuild at a time (optimizer or reindex)
        self._swap = threading.Lock()  # held while the store is renumbered and installed
        self._snapshots = threading.Lock()  # one snapshot at a time, written in capture order
        self._lock = ReadWriteLock()
        self._gen = Generation.empty(row)
        self._dropped = False  # set under _writer and _snapshots; never cleared
        self._changes_since_snapshot = 0
        self._writes = 0  # twice the writes applied, +1 while one runs (see _write)
        # Recent filters' matching labels, valid while no write lands (filters repeat: a
        # tenant, a language); the SQL scan over every document's metadata is the cost.
        # Keyed by a digest of the compiled filter (a $in can be 10,000 values long) and
        # held as bitmaps: one bit per label, however many match.
        self._filters: OrderedDict[bytes, tuple[int, int, np.ndarray]] = OrderedDict()
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

    def _check_open(self) -> None:
        if self._dropped:
            raise CollectionNotFound(f"collection {self.name!r} was dropped")

    # ------------------------------------------------------------ opening and rebuilding

    def open(self) -> Collection:
        """Load the snapshot when it is current and catch it up from the store, or rebuild."""
        started = time.perf_counter()
        staged = self._training_size() > 0
        number, spec = self.row.generation, self.row.index_spec
        index = read_snapshot(self._snapshot_path(number, spec, staged))
        if index is None and staged:  # trained since the last open?
            index = read_snapshot(self._snapshot_path(number, spec, False))
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

    def _snapshot_path(self, generation: int, spec: str, staged: bool) -> Path:
        # The numbering and the spec are in the name: a snapshot of another numbering or
        # spec is never mistaken for current.
        digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
        kind = "staged" if staged else "index"
        return self.snapshot_dir / f"{generation}.{kind}.{digest}.faiss"

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
        return Generation(self.row.generation, index, ids, live, trained, self.row.index_spec)

    def _install(self, gen: Generation) -> None:
        with self._lock.writing():
            self._gen = gen

    def rebuild(self) -> None:
        """A fresh index from the store: trained when the spec needs it and there are enough
        vectors, dead vectors left out. Writes and searches go on while it builds; the new
        generation is installed at once, with the writes made meanwhile; then a snapshot."""
        with self._rebuilding:
            with self._writer:
                self._check_open()
                upto = self.row.next_label
            built = build(self.store, self.row, self._training_size(), upto)
            with self._writer, self._swap:
                self._check_open()  # dropped meanwhile: the store's rows are another's now
                self._install(catch_up(self.store, self.row, built))
            self.snapshot()

    def _resync(self) -> None:
        """Under the writer lock: the index rebuilt from the store, having been found out
        of step with it. Nothing in this process writes the store behind the index's back;
        another process on the same data directory could."""
        log.error("%s: the index is out of step with the store; rebuilding it", self.name)
        stored = self.store.collection(self.name)
        self.row.generation, self.row.next_label = stored.generation, stored.next_label
        built = build(self.store, self.row, self._training_size(), self.row.next_label)
        with self._swap:
            self._install(catch_up(self.store, self.row, built))

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
        """Write the index to disk (atomically), and drop the snapshots it replaces.

        The read lock is held only while the index is copied: a writer waiting for it makes
        every new search wait too, so the write and fsync of the copy come after. The copy
        is named after the generation it was taken from."""
        with self._snapshots:
            if self._dropped:
                return  # its folder is gone, or another collection's by now
            with self._lock.reading():
                gen = self._gen
                data = serialized(gen.index)
                captured = self._changes_since_snapshot
            path = self._snapshot_path(gen.number, gen.spec, not gen.trained)
            write_snapshot(data, path)
            del data
            # The writes since the copy still count toward the next one.
            self._changes_since_snapshot = max(0, self._changes_since_snapshot - captured)
            # And what a crash left half written (.faiss.tmp): this lock is the only writer.
            for old in self.snapshot_dir.glob("*.faiss*"):
                if old != path:
                    old.unlink(missing_ok=True)

    def drop(self) -> None:
        """Delete the collection from the store and its snapshots from disk. This object is
        done with after: its maintenance stops, a write in progress finishes first, and
        every later write, rebuild or snapshot raises CollectionNotFound (or, a snapshot,
        does nothing) instead of touching what a new collection of the name owns."""
        self.optimizer.close()  # let its maintenance finish, start no more
        with self._writer, self._snapshots:
            self._dropped = True
            self.store.drop_collection(self.name)
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)

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
        with self._write():
            try:
                labels, replaced = self.store.upsert(self.name, docs, self._gen.index.ntotal)
            except IndexOutOfStep:  # nothing was stored: bring the index in step, then store
                self._resync()
                labels, replaced = self.store.upsert(self.name, docs, self._gen.index.ntotal)
            with self._lock.writing():
                gen = self._gen
                gen.append(np.stack([doc.vector for doc in docs]), ids, labels)
                gen.live.discard([label for label in replaced if label is not None])
            self.row.next_label = labels[-1] + 1
            self._after_write(len(docs))
        return ids

    def delete(self, ids: Sequence[str]) -> int:
        """Delete by id; how many existed. Durable when it returns."""
        with self._write():
            dead = self.store.delete(self.name, list(ids))
            with self._lock.writing():
                self._gen.live.discard(dead)
            self._after_write(len(dead))
        return len(dead)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write, under the writer lock. A cached filter result is stale from the write's
        start (the store changes first) to its end (the index follows): the count of writes
        moves at both, so that no search keeps one read in between."""
        with self._writer:
            self._check_open()
            self._writes += 1
            try:
                yield
            finally:
                self._writes += 1

    def _after_write(self, changes: int) -> None:
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
        check_spec(index_spec, self.dim)  # reject a bad spec before anything
        new_index(index_spec, self.dim, self.row.metric)
        merged = {**self.row.options, **(options or {})}
        with self._rebuilding, self._writer:
            self._check_open()
            self.store.set_index_spec(self.name, index_spec, merged)
            self.row.index_spec, self.row.options = index_spec, merged
        self.rebuild()

    # ------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        self._check_open()
        found = self.store.get(self.name, list(ids), self.dim)
        return [found.get(doc_id) for doc_id in ids]

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        """How many documents (that match `where`)."""
        if parse(where) is None:
            return self._gen.live.count
        self._check_open()
        return self.store.count_where(self.name, *compile_filter(where))

    def scroll(
        self,
        where: Mapping[str, Any] | None,
        limit: int,
        after: str | None = None,
        *,
        with_vectors: bool = False,
    ) -> tuple[list[Document], str | None]:
        """A page of the matching documents in id order, ids above `after`, and the cursor
        of the next page (None: no more). Each page is one read of the store; the cursor is
        an id, so a document present throughout a scroll comes exactly once (backend.py)."""
        checked_scroll(limit, after)
        condition = compile_filter(where)
        self._check_open()
        docs = self.store.scroll(self.name, *condition, after, limit + 1, with_vectors)
        page = docs[:limit]
        return page, (page[-1].id if len(docs) > limit else None)

    def delete_where(self, where: Mapping[str, Any]) -> int:
        """Delete the matching documents; how many. Durable when it returns."""
        condition = compile_filter(required_filter(where))
        with self._write():
            dead = self.store.delete_where(self.name, *condition)
            with self._lock.writing():
                self._gen.live.discard(dead)
            self._after_write(len(dead))
        return len(dead)

    def update_metadata(
        self, ids: Sequence[str], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Merge `patch` into (or, mode "replace", make it) the documents' metadata; how many
        of the ids exist. No vector changes; filters see it when this returns."""
        ids = checked_patch(ids, patch, mode)
        with self._write():
            found = self.store.update_metadata(
                self.name, ids, lambda metadata: patched(metadata, patch, mode)
            )
            self._after_write(0)  # no vector changed; cached filter results are stale
        return found

    def index_vectors(self) -> int:
        return self._gen.index.ntotal

    def ids_containing(self, word: str, limit: int) -> list[str]:
        self._check_open()
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
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """The k nearest live documents for each query vector (one row each), best first.

        `where` filters on metadata inside the search (see filters.py). ef_search (HNSW) and
        nprobe (IVF) override the collection's defaults for this call. with_documents=False:
        ids and scores only, as the index found them. score_threshold drops the hits worse
        than it (hits.within); with_vectors: each hit carries its document's stored vector.
        """
        queries = checked_query(self.row, queries, k, model, ef_search=ef_search, nprobe=nprobe)
        threshold = checked_threshold(score_threshold)
        condition = compile_filter(where) if where else None
        with contextlib.ExitStack() as held:
            writes_held = swap_waited = False
            while True:
                self._check_open()  # a new collection of the name may be renumbering the store
                gen = self._gen
                matching = None
                if condition is not None:
                    number, matching, read_at = self._matching(condition)
                    if number != gen.number and writes_held:
                        # Under the writer lock no renumbering of this process is half done:
                        # another process renumbered the store, and only a rebuild mends it.
                        self._resync()
                        continue
                    if number != gen.number and not swap_waited:
                        # Renumbered here, the new generation not yet in: a rebuild installs
                        # it holding _swap.
                        swap_waited = True
                        with self._swap:
                            continue
                    if number != gen.number:  # still: not by this process (the writer lock)
                        held.enter_context(self._writer)
                        writes_held = True
                        continue
                with self._lock.reading():
                    if self._gen is not gen:  # swapped meanwhile: the labels are stale
                        continue
                    # A write during or since the filter's read of the store (a seqlock: the
                    # count is odd while one runs): the store and the index may each hold
                    # another side of it (a document upserted again matches by a label the
                    # index lacks, or the index dropped the one the filter has), and the
                    # document would be in neither. With writes held off, none can.
                    current = (
                        matching is None or writes_held
                        or (read_at % 2 == 0 and self._writes == read_at)
                    )  # fmt: skip
                    if current:
                        labels, scores = search_generation(
                            gen, queries, k, matching, ef_search or self.ef_search,
                            nprobe or self.nprobe,
                        )  # fmt: skip
                        ids = [[gen.ids[label] for label in row if label >= 0] for row in labels]
                if current:
                    break
                held.enter_context(self._writer)
                writes_held = True
        texts = None
        wanted = sorted({doc_id for row in ids for doc_id in row})
        if with_documents:  # a document changed since the search to match no more is left out
            texts = self.store.texts(self.name, wanted, condition)
        hits = within(assemble_hits(ids, scores, texts), self.row.metric, threshold)
        if with_vectors:
            vectors = self.store.vectors(self.name, wanted)
            for hit in (hit for row in hits for hit in row):
                hit.vector = vectors.get(hit.id)
        return hits

    def _matching(self, condition: tuple[str, list[Any]]) -> tuple[int, np.ndarray, int]:
        """The labels a filter matches, as a bitmap, their numbering, and the count of
        writes they were read at: from the cache while no write or renumbering came since,
        else from the store."""
        key = hashlib.sha256(repr(condition).encode()).digest()
        writes = self._writes
        with self._filters_lock:
            cached = self._filters.get(key)
        if cached is not None and cached[0] == writes and cached[1] == self._gen.number:
            return cached[1], cached[2], writes
        number, labels = self.store.labels_where(self.name, *condition)
        labels = bitmap(labels)
        with self._filters_lock:
            self._filters[key] = (writes, number, labels)
            self._filters.move_to_end(key)
            while len(self._filters) > FILTER_CACHE_ENTRIES:
                self._filters.popitem(last=False)
        return number, labels, writes

    def info(self) -> CollectionInfo:
        self._check_open()
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
