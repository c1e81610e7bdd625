"""The source of truth: collections and documents in SQLite (WAL mode, full fsync).

Every acknowledged write is a committed transaction here before the call returns; the FAISS
indexes are derived from this store and can always be rebuilt from it.

Each document holds a `label`: its vector's position in the collection's FAISS index.
Labels only grow (an upsert that replaces a document gives it a new label), so the index is
append-only and a label is never reused within a generation; a label that no document holds
any more is dead, and the search skips it. A rebuild renumbers the labels (`relabel`) and
bumps the collection's generation, which makes every older snapshot stale.

Connections are borrowed for one operation and handed back (`_connection`), never kept per
thread: the store's open connections are bounded by the operations running at once, not
by how many threads ever touched it (each optimizer run is a thread of its own).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedsense.server.index.errors import (
    CollectionNotFound,
    IndexOutOfStep,
    IndexUnavailable,
    StorageFull,
)

# Idle connections kept for the next operation (about as many as the server's worker
# threads run store operations at once); more are opened while more run at once, and
# closed when they come back to a full pool.
MAX_IDLE_CONNECTIONS = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    metric TEXT NOT NULL,
    index_spec TEXT NOT NULL,
    store_tokens INTEGER NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    next_label INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    label INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    tokens TEXT,
    token_vectors BLOB,
    updated_at REAL NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_by_label ON documents (collection, label);
CREATE TABLE IF NOT EXISTS inventories (
    name TEXT PRIMARY KEY,
    words TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Token:
    """A token of a stored document and where it sits in the document's text."""

    text: str
    start: int
    end: int


@dataclass
class Document:
    text: str
    vector: np.ndarray  # (dim,) float32
    id: str | None = None  # None: the store makes one
    metadata: dict[str, Any] | None = None
    tokens: list[Token] | None = None  # with token_vectors, when the collection stores them
    token_vectors: np.ndarray | None = None  # (len(tokens), dim) float32


@dataclass
class CollectionRow:
    name: str
    model: str
    dim: int
    metric: str
    index_spec: str
    store_tokens: bool
    options: dict[str, Any]
    created_at: float
    generation: int
    next_label: int


def _store_error(err: sqlite3.OperationalError, path: Path) -> Exception:
    """What a caller is told of SQLite's failure: the disk full, or the store locked past
    the busy timeout, or unreadable, are the machine's state, not the request's fault (and
    a write that failed was rolled back). Anything else stays as it is: INTERNAL."""
    said = str(err)
    if "full" in said:  # "database or disk is full"
        return StorageFull(f"the disk holding the store ({path.name}) is full: nothing was "
                           "stored; free some space, then write again")  # fmt: skip
    if "locked" in said or "busy" in said:
        return IndexUnavailable(
            f"the store ({path.name}) stayed locked by another connection or process past "
            "the busy timeout: nothing was stored; retry later"
        )
    if "disk I/O error" in said:
        return IndexUnavailable(f"the store ({path.name}) could not be read or written (disk "
                                "I/O error): nothing was stored; retry later")  # fmt: skip
    return err


class Store:
    # How long a connection waits for another's write lock before "database is locked".
    BUSY_TIMEOUT_MS = 30_000

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._write_lock = threading.Lock()  # one writer in this process; SQLite: one overall
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.executescript(SCHEMA)

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers run while a writer commits
        # FULL: a commit is fsynced before it returns, so an acknowledged write survives
        # a power cut too, not only a killed process.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, used by nothing else until it is handed back
        (with no transaction open: an operation that fails half-way is rolled back)."""
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
        except sqlite3.OperationalError as err:
            raise _store_error(err, self.path) from err
        try:
            yield conn
        except sqlite3.OperationalError as err:
            raise _store_error(err, self.path) from err
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close the idle connections; one in use closes when its operation ends."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one read."""
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """The rows of one read, as they come, from one read snapshot: the connection is
        handed back when they are all read (or the iteration is closed)."""
        with self._connection() as conn:
            cursor = conn.execute(sql, params)
            try:
                yield from cursor
            finally:
                cursor.close()  # ends the statement's read snapshot before reuse

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite ends it itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------ collections

    def add_collection(self, row: CollectionRow) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO collections (name, model, dim, metric, index_spec, store_tokens, "
                "options, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.name, row.model, row.dim, row.metric, row.index_spec,
                 int(row.store_tokens), json.dumps(row.options), row.created_at),
            )  # fmt: skip

    def drop_collection(self, name: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM documents WHERE collection = ?", (name,))
            conn.execute("DELETE FROM collections WHERE name = ?", (name,))

    def set_index_spec(self, name: str, index_spec: str, options: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE collections SET index_spec = ?, options = ? WHERE name = ?",
                (index_spec, json.dumps(options), name),
            )

    def collections(self) -> list[CollectionRow]:
        rows = self._query(f"SELECT {_ROW} FROM collections ORDER BY name")
        return [_collection_row(row) for row in rows]

    def collection(self, name: str) -> CollectionRow:
        """The collection's row as stored now; CollectionNotFound when there is none."""
        rows = self._query(f"SELECT {_ROW} FROM collections WHERE name = ?", (name,))
        if not rows:
            raise CollectionNotFound(f"no collection named {name!r}")
        return _collection_row(rows[0])

    # ------------------------------------------------------------ documents

    def upsert(
        self, collection: str, docs: Sequence[Document], first_label: int
    ) -> tuple[list[int], list[int | None]]:
        """Insert or replace documents in one transaction (ids must be set and unique), at
        labels from `first_label` on: the next position of the caller's index.

        Returns each document's new label and the label it replaced (None for a new id).
        IndexOutOfStep, with nothing stored, when the store's next label is another one:
        labels given out of step with the index would point at the wrong vectors.
        """
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT next_label FROM collections WHERE name = ?", (collection,)
            ).fetchone()
            if row is None:
                raise CollectionNotFound(f"no collection named {collection!r}")
            next_label = row[0]
            if next_label != first_label:
                raise IndexOutOfStep(
                    f"collection {collection!r}: the store's next label is {next_label}, the "
                    f"index's {first_label}; nothing was stored"
                )
            old_labels: list[int | None] = []
            labels = list(range(next_label, next_label + len(docs)))
            for doc, label in zip(docs, labels, strict=True):
                old = conn.execute(
                    "SELECT label FROM documents WHERE collection = ? AND id = ?",
                    (collection, doc.id),
                ).fetchone()
                old_labels.append(old[0] if old else None)
                tokens = (
                    json.dumps([[t.text, t.start, t.end] for t in doc.tokens], ensure_ascii=False)
                    if doc.tokens is not None
                    else None
                )
                token_vectors = (
                    doc.token_vectors.astype(np.float32).tobytes()
                    if doc.token_vectors is not None
                    else None
                )
                conn.execute(
                    "INSERT OR REPLACE INTO documents (collection, id, label, text, metadata, "
                    "vector, tokens, token_vectors, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (collection, doc.id, label, doc.text,
                     json.dumps(doc.metadata or {}, ensure_ascii=False),
                     doc.vector.astype(np.float32).tobytes(), tokens, token_vectors, now),
                )  # fmt: skip
            conn.execute(
                "UPDATE collections SET next_label = ? WHERE name = ?",
                (next_label + len(docs), collection),
            )
        return labels, old_labels

    def delete(self, collection: str, ids: Sequence[str]) -> list[int]:
        """Delete by id in one transaction; the labels that died (unknown ids are skipped)."""
        with self.transaction() as conn:
            dead = []
            for doc_id in ids:
                row = conn.execute(
                    "DELETE FROM documents WHERE collection = ? AND id = ? RETURNING label",
                    (collection, doc_id),
                ).fetchone()
                if row:
                    dead.append(row[0])
        return dead

    def get(self, collection: str, ids: Sequence[str], dim: int) -> dict[str, Document]:
        """The whole documents (vectors and token vectors too) by id."""
        found: dict[str, Document] = {}
        columns = "id, text, metadata, vector, tokens, token_vectors"
        for doc_id, text, metadata, vector, tokens, token_vectors in self._by_id(
            collection, ids, columns
        ):
            found[doc_id] = _document(doc_id, text, metadata, vector, tokens, token_vectors, dim)
        return found

    def texts(
        self,
        collection: str,
        ids: Sequence[str],
        condition: tuple[str, Sequence[Any]] | None = None,
    ) -> dict[str, tuple[str, dict]]:
        """(text, metadata) by id: what a search hit carries. No vector is read: a
        document's token vectors can be a hundred times the size of its text. With
        `condition` (a compiled filter), only the documents that match it as they are read."""
        return {
            doc_id: (text, json.loads(metadata))
            for doc_id, text, metadata in self._by_id(
                collection, ids, "id, text, metadata", condition
            )
        }

    def vectors(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The pooled vectors by id (not the token vectors)."""
        return {
            doc_id: np.frombuffer(vector, dtype=np.float32).copy()
            for doc_id, vector in self._by_id(collection, ids, "id, vector")
        }

    # ------------------------------------------------------------ by filter

    def count_where(self, collection: str, condition: str, params: Sequence[Any]) -> int:
        ((n,),) = self._query(
            f"SELECT COUNT(*) FROM documents WHERE collection = ? AND {condition}",
            [collection, *params],
        )
        return n

    def delete_where(self, collection: str, condition: str, params: Sequence[Any]) -> list[int]:
        """Delete the matching documents in one transaction; the labels that died."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"DELETE FROM documents WHERE collection = ? AND {condition} RETURNING label",
                [collection, *params],
            ).fetchall()
        return [label for (label,) in rows]

    def scroll(
        self, collection: str, condition: str, params: Sequence[Any], after: str | None,
        limit: int, with_vectors: bool,
    ) -> list[Document]:  # fmt: skip
        """Up to `limit` matching documents with ids above `after`, in id order (the primary
        key's order: SQLite compares TEXT bytewise, which for UTF-8 is code-point order), from
        one read snapshot; vector empty unless with_vectors."""
        rows = self._query(
            f"SELECT id, text, metadata{', vector' if with_vectors else ''} FROM documents "
            f"WHERE collection = ? AND id > ? AND {condition} ORDER BY id LIMIT ?",
            [collection, after or "", *params, limit],
        )
        empty = np.zeros(0, dtype=np.float32)
        return [
            Document(
                id=row[0],
                text=row[1],
                metadata=json.loads(row[2]),
                vector=np.frombuffer(row[3], dtype=np.float32).copy() if with_vectors else empty,
            )
            for row in rows
        ]

    def update_metadata(
        self, collection: str, ids: Sequence[str], change: Callable[[dict], dict]
    ) -> int:
        """Each existing document's metadata replaced by change(metadata), in one
        transaction; how many existed. Labels, vectors and texts stay as they are."""
        now = time.time()
        with self.transaction() as conn:
            updates = []
            for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = list(ids[start : start + 500])
                rows = conn.execute(
                    "SELECT id, metadata FROM documents WHERE collection = ? AND id IN "
                    f"({','.join('?' * len(chunk))})",
                    [collection, *chunk],
                ).fetchall()
                for doc_id, metadata in rows:
                    new = json.dumps(change(json.loads(metadata)), ensure_ascii=False)
                    updates.append((new, now, collection, doc_id))
            conn.executemany(
                "UPDATE documents SET metadata = ?, updated_at = ? WHERE collection = ? AND id = ?",
                updates,
            )
        return len(updates)

    def _by_id(
        self,
        collection: str,
        ids: Sequence[str],
        columns: str,
        condition: tuple[str, Sequence[Any]] | None = None,
    ) -> Iterator[Any]:
        also, params = (f" AND ({condition[0]})", list(condition[1])) if condition else ("", [])
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = list(ids[start : start + 500])
            yield from self._query(
                f"SELECT {columns} FROM documents "
                f"WHERE collection = ? AND id IN ({','.join('?' * len(chunk))}){also}",
                [collection, *chunk, *params],
            )

    def count(self, collection: str) -> int:
        ((n,),) = self._query("SELECT COUNT(*) FROM documents WHERE collection = ?", (collection,))
        return n

    def token_stats(self, collection: str) -> tuple[int, int]:
        """(tokens stored, bytes they take: vectors plus token texts and offsets)."""
        ((tokens, size),) = self._query(
            "SELECT COALESCE(SUM(json_array_length(tokens)), 0), "
            "COALESCE(SUM(length(token_vectors) + length(tokens)), 0) "
            "FROM documents WHERE collection = ? AND tokens IS NOT NULL",
            (collection,),
        )
        return int(tokens), int(size)

    def labels_where(
        self, collection: str, condition: str, params: Sequence[Any]
    ) -> tuple[int, np.ndarray]:
        """The labels of the documents that match, and the generation (label numbering)
        they are in: read together, so a relabelling cannot come between them."""
        with self._connection() as conn:
            conn.execute("BEGIN")  # deferred: one read snapshot for both statements
            row = conn.execute(
                "SELECT generation FROM collections WHERE name = ?", (collection,)
            ).fetchone()
            if row is None:
                raise CollectionNotFound(f"no collection named {collection!r}")
            rows = conn.execute(
                f"SELECT label FROM documents WHERE collection = ? AND {condition}",
                [collection, *params],
            )
            labels = np.fromiter((label for (label,) in rows), dtype=np.int64)
            conn.execute("COMMIT")
        return row[0], labels

    def live(self, collection: str) -> Iterator[tuple[int, str]]:
        """(label, id) of every document, in label order."""
        yield from self._rows(
            "SELECT label, id FROM documents WHERE collection = ? ORDER BY label", (collection,)
        )

    def vectors_from(
        self, collection: str, first_label: int, dim: int, batch: int = 10_000,
        below: int | None = None,
    ) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:  # fmt: skip
        """(labels, ids, vectors) of the documents with first_label <= label < below, in
        label order, from one read snapshot."""
        rows = self._rows(
            "SELECT label, id, vector FROM documents WHERE collection = ? AND label >= ? "
            "AND label < ? ORDER BY label",
            (collection, first_label, 2**62 if below is None else below),
        )
        with closing(rows):
            while chunk := list(itertools.islice(rows, batch)):
                labels = np.fromiter((row[0] for row in chunk), dtype=np.int64, count=len(chunk))
                vectors = np.frombuffer(b"".join(row[2] for row in chunk), dtype=np.float32)
                yield labels, [row[1] for row in chunk], vectors.reshape(len(chunk), dim)

    def sample_vectors(self, collection: str, n: int, dim: int) -> np.ndarray:
        """n stored vectors drawn at random (for training an index)."""
        rows = self._query(
            "SELECT vector FROM documents WHERE collection = ? ORDER BY random() LIMIT ?",
            (collection, n),
        )
        return np.frombuffer(b"".join(v for (v,) in rows), dtype=np.float32).reshape(-1, dim)

    def relabel(self, collection: str, old: np.ndarray, new: np.ndarray, next_label: int) -> int:
        """Give every document a new label (old[i] -> new[i]; every live label must be in
        `old`) in one transaction, bumping the generation; the new generation."""
        with self.transaction() as conn:
            # Move every label out of the way first: the (collection, label) index is unique.
            conn.execute(
                "UPDATE documents SET label = -1 - label WHERE collection = ?", (collection,)
            )
            conn.executemany(
                "UPDATE documents SET label = ? WHERE collection = ? AND label = ?",
                ((int(n), collection, -1 - int(o)) for o, n in zip(old, new, strict=True)),
            )
            (left,) = conn.execute(
                "SELECT COUNT(*) FROM documents WHERE collection = ? AND label < 0", (collection,)
            ).fetchone()
            if left:
                raise RuntimeError(f"relabel of {collection!r} left {left} documents unlabelled")
            conn.execute(
                "UPDATE collections SET generation = generation + 1, next_label = ? WHERE name = ?",
                (next_label, collection),
            )
            (generation,) = conn.execute(
                "SELECT generation FROM collections WHERE name = ?", (collection,)
            ).fetchone()
        return generation

    # ------------------------------------------------------------ sense inventories

    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        """Store an inventory; False when it exists and replace is not asked."""
        with self.transaction() as conn:
            verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
            cursor = conn.execute(
                f"{verb} INTO inventories (name, words, updated_at) VALUES (?, ?, ?)",
                (name, words_json, time.time()),
            )
            return cursor.rowcount == 1

    def get_inventory(self, name: str) -> str | None:
        rows = self._query("SELECT words FROM inventories WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def inventories(self) -> list[tuple[str, str]]:
        rows = self._query("SELECT name, words FROM inventories ORDER BY name")
        return [(name, words) for name, words in rows]

    def delete_inventory(self, name: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM inventories WHERE name = ?", (name,)).rowcount == 1

    def ids_containing(self, collection: str, word: str, limit: int) -> list[str]:
        """Ids of up to `limit` documents whose text contains `word`, in label order; only
        documents with token vectors (one upserted with its vector alone has no occurrences)."""
        rows = self._query(
            "SELECT id FROM documents WHERE collection = ? AND instr(text, ?) > 0 "
            "AND tokens IS NOT NULL ORDER BY label LIMIT ?",
            (collection, word, limit),
        )
        return [doc_id for (doc_id,) in rows]


_ROW = (
    "name, model, dim, metric, index_spec, store_tokens, options, created_at, generation, "
    "next_label"
)


def _collection_row(row: Sequence[Any]) -> CollectionRow:
    name, model, dim, metric, spec, store_tokens, options, created, generation, next_label = row
    return CollectionRow(name, model, dim, metric, spec, bool(store_tokens), json.loads(options),
                         created, generation, next_label)  # fmt: skip


def _document(
    doc_id: str,
    text: str,
    metadata: str,
    vector: bytes,
    tokens: str | None,
    token_vectors: bytes | None,
    dim: int,
) -> Document:
    return Document(
        id=doc_id,
        text=text,
        metadata=json.loads(metadata),
        vector=np.frombuffer(vector, dtype=np.float32).copy(),
        tokens=[Token(t, s, e) for t, s, e in json.loads(tokens)] if tokens else None,
        token_vectors=(
            np.frombuffer(token_vectors, dtype=np.float32).reshape(-1, dim).copy()
            if token_vectors is not None
            else None
        ),
    )
