"""Token rows and their versions: how a document's token vectors are replaced in Milvus, which
has no transactions, without a reader or a concurrent writer ever losing them.

Every write of a document's tokens is a new version (unique, starting with its creation time
in hex nanoseconds). The invariant: **the version a document row names has all its token
rows**. The rules that keep it, whoever writes, from however many replicas at once:
1. A writer inserts its version's token rows *before* the document row that names them.
2. A writer deletes only versions that can never be named again: the one its documents named
   when it started (a version is named once, by the write that made it; once read as named
   it has been replaced by the time the writer's own upsert lands), and unnamed ones older
   than RETIRE_AFTER_S, which no write can still be about to name (every call has a
   deadline far shorter). A writer never deletes "every version but mine": a concurrent
   writer's version may be named a moment later.
3. Deleting a document deletes the version its row named, and old unnamed ones (rule 2).
A race leaves at worst an unnamed version behind (two writers replace the same version at
once); the next write of that id after RETIRE_AFTER_S removes it.

Readers: the document row and its token rows are two queries. When a named version's rows
are gone between them, the document was replaced (rule 2) or deleted meanwhile: `read`
reads those documents again, so a document never comes back without its tokens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from embedsense.server.index.errors import IndexUnavailable
from embedsense.server.index.milvus.calls import MilvusCalls
from embedsense.server.index.milvus.filters import literal, literal_list
from embedsense.server.index.store import Document, Token

# Reads document rows: (id -> Document without tokens, id -> the version it names).
DocumentReader = Callable[[list[str]], tuple[dict[str, Document], dict[str, str]]]

RETIRE_AFTER_S = 600
MAX_ROWS_PER_QUERY = 16_384  # Milvus's query window
INSERT_BATCH = 4096
READ_ATTEMPTS = 8  # a document replaced this many times while one read ran: UNAVAILABLE


def new_version() -> str:
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def _retired_before() -> str:
    """Versions below this (they compare as strings) are older than RETIRE_AFTER_S."""
    return f"{time.time_ns() - int(RETIRE_AFTER_S * 1e9):016x}"


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TokenRows:
    """The token rows of one collection incarnation (`docs` names their versions)."""

    def __init__(self, calls: MilvusCalls, name: str, docs: str, tokens: str) -> None:
        self.calls = calls
        self.name = name
        self.docs = docs
        self.tokens = tokens

    # ------------------------------------------------------------ writes

    def named(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> the version its document row names now (documents that exist)."""
        named: dict[str, str] = {}
        for chunk in chunks(list(ids), 1000):
            for row in self.calls.query(
                f"read versions in {self.name!r}",
                self.docs,
                f"id in {literal_list(chunk)}",
                ["id", "tokens_version"],
            ):
                named[row["id"]] = row["tokens_version"]
        return named

    def insert(self, docs: Sequence[Document], versions: Sequence[str]) -> None:
        """Rule 1: the new versions' rows, before any document row names them."""
        rows = [
            {
                "key": f"{d.id}|{v}|{i}",
                "doc_id": d.id,
                "version": v,
                "position": i,
                "token": t.text[:1024],
                "start": t.start,
                "end": t.end,
                "vector": d.token_vectors[i].tolist(),
            }
            for d, v in zip(docs, versions, strict=True)
            if d.tokens is not None
            for i, t in enumerate(d.tokens)
        ]
        for batch in chunks(rows, INSERT_BATCH):
            self.calls(f"write token vectors into {self.name!r}", "insert", self.tokens, batch)

    def retire(self, ids: Sequence[str], replaced: Sequence[str], kept: Sequence[str]) -> None:
        """Rules 2 and 3: delete the `replaced` versions of these documents and their
        unnamed versions older than RETIRE_AFTER_S, never one of `kept`."""
        if not ids:
            return
        old = [v for v in dict.fromkeys(replaced) if v and v not in set(kept)]
        expression = (
            f"doc_id in {literal_list(list(ids))} and "
            f"not (version in {literal_list(list(kept))}) and "
            f"(version < {literal(_retired_before())}"
            + (f" or version in {literal_list(old)})" if old else ")")
        )
        self.calls(
            f"retire token vectors in {self.name!r}", "delete", self.tokens, filter=expression
        )

    # ------------------------------------------------------------ reads

    def read(self, fetch: DocumentReader, ids: list[str]) -> dict[str, Document]:
        """The documents (rows read by `fetch`) with their token vectors attached."""
        found, versions = fetch(ids)
        pending = [i for i in found if versions[i]]
        for _ in range(READ_ATTEMPTS):
            if not pending:
                return found
            rows = self._rows({i: versions[i] for i in pending})
            torn = []
            for doc_id in pending:
                mine = sorted(rows.get(doc_id, []), key=lambda r: r["position"])
                if [r["position"] for r in mine] != list(range(len(mine))) or not mine:
                    torn.append(doc_id)  # replaced or deleted since its row was read
                    continue
                found[doc_id].tokens = [Token(r["token"], r["start"], r["end"]) for r in mine]
                found[doc_id].token_vectors = np.asarray([r["vector"] for r in mine], np.float32)
            if not torn:
                return found
            again, again_versions = fetch(torn)
            for doc_id in torn:
                found.pop(doc_id, None)
            found.update(again)
            versions.update(again_versions)
            pending = [i for i in again if again_versions[i]]
        raise IndexUnavailable(
            f"collection {self.name!r}: documents {pending[:5]} were replaced "
            f"{READ_ATTEMPTS} times while being read; retry"
        )

    def _rows(self, versions: dict[str, str]) -> dict[str, list[dict]]:
        by_doc: dict[str, list[dict]] = {}
        # A query returns at most Milvus's row window: documents of up to 512 tokens go 32
        # to a query; when one comes back full, each of its documents is read page by page.
        for chunk in chunks(list(versions), MAX_ROWS_PER_QUERY // 512):
            rows = self._query(chunk, [versions[i] for i in chunk], "")
            if len(rows) == MAX_ROWS_PER_QUERY:
                rows = [row for i in chunk for row in self._paged(i, versions[i])]
            for row in rows:
                by_doc.setdefault(row["doc_id"], []).append(row)
        return by_doc

    def _query(self, doc_ids: list[str], versions: list[str], more: str) -> list[dict]:
        return self.calls.query(
            f"read token vectors in {self.name!r}",
            self.tokens,
            f"doc_id in {literal_list(doc_ids)} and version in {literal_list(versions)}{more}",
            ["doc_id", "position", "token", "start", "end", "vector"],
            limit=MAX_ROWS_PER_QUERY,
        )

    def _paged(self, doc_id: str, version: str) -> Iterator[dict]:
        for first in range(0, 2**31, MAX_ROWS_PER_QUERY):
            page = self._query(
                [doc_id],
                [version],
                f" and position >= {first} and position < {first + MAX_ROWS_PER_QUERY}",
            )
            yield from page
            if len(page) < MAX_ROWS_PER_QUERY:
                return
