"""What the service needs from an index backend: the smallest set of operations, as two
protocols. `faiss` (FAISS + SQLite in a data directory, the zero-setup default) and
`milvus` (pymilvus' MilvusClient: an embedded milvus-lite file or a Milvus server) both
implement them, and tests/test_backends.py runs one test module against each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.hits import Hit
from embedsense.server.index.store import Document

BACKENDS = ("faiss", "milvus")


class CollectionBackend(Protocol):
    """One collection of documents: vectors, texts, metadata, and token vectors when it
    keeps them."""

    @property
    def name(self) -> str: ...

    @property
    def store_tokens(self) -> bool: ...

    @property
    def dim(self) -> int: ...

    def info(self) -> CollectionInfo: ...

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        """How many documents match `where` (filters.py; None or {}: all of them)."""
        ...

    def index_vectors(self) -> int:
        """Vectors the index holds, dead ones included where it keeps them (a metric)."""
        ...

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        """Insert or replace; the ids. When it returns, every read sees the documents. A
        document may come with its vector only (no tokens), in any collection: embedded
        elsewhere, it has no word occurrences. DimensionMismatch names both dimensions."""
        ...

    def get(self, ids: Sequence[str]) -> list[Document | None]: ...

    def delete(self, ids: Sequence[str]) -> int:
        """Delete by id; how many existed."""
        ...

    def delete_where(self, where: Mapping[str, Any]) -> int:
        """Delete the documents that match; how many. FilterError for an empty filter (to
        delete everything, drop the collection)."""
        ...

    def scroll(
        self,
        where: Mapping[str, Any] | None,
        limit: int,
        after: str | None = None,
        *,
        with_vectors: bool = False,
    ) -> tuple[list[Document], str | None]:
        """One page of the documents that match, in id order (Unicode code points), with
        ids above `after`: (at most `limit` documents, 1-10,000, and the `after` of the next
        page, or None when there is no more). Documents carry id, text and metadata, and
        their vector when with_vectors (else an empty array); never token vectors.

        The cursor is the last id returned, so a scroll promises: a document that exists
        and matches from the scroll's first page to its last comes exactly once; one
        inserted, deleted or changed to match (or not) meanwhile comes once or not at all;
        none comes twice. A cursor never expires. A page may hold fewer than `limit`
        documents with more to come (a document deleted while the page was read; on milvus,
        a page cut short to stay within Milvus's query window): the scroll ends only when
        the next cursor is None."""
        ...

    def update_metadata(
        self, ids: Sequence[str], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Change the metadata of these documents; how many of the ids exist. mode "merge":
        the patch's top-level keys are set (a key set to None holds null; it is not
        removed), the others kept; "replace": the patch is the new metadata. No vector is
        recomputed; filters see the change when it returns."""
        ...

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
        """The k best documents for each query (a (dim,) vector or an (n, dim) batch): one
        list of hits per query, best first. score_threshold keeps the hits whose score is
        at least it (cosine, ip) or whose squared distance is at most it (l2); with_vectors
        puts each document's stored vector on its hit."""
        ...

    def ids_containing(self, word: str, limit: int) -> list[str]:
        """Ids of documents whose text contains `word` (at most `limit`): where a word's
        occurrences are looked for."""
        ...


class IndexBackend(Protocol):
    """Every collection, and the named sense inventories, of one deployment."""

    kind: str  # one of BACKENDS

    def create(
        self,
        name: str,
        *,
        model: str,
        dim: int,
        metric: str = "cosine",
        index_spec: str = "Flat",
        store_tokens: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> CollectionInfo: ...

    def get(self, name: str) -> CollectionBackend:
        """The collection; CollectionNotFound if there is none by that name."""
        ...

    def names(self) -> list[str]: ...

    def list(self) -> list[CollectionInfo]: ...

    def drop(self, name: str) -> None: ...

    def close(self) -> None: ...

    # Sense inventories, stored as JSON text (the senses layer validates them).
    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        """Store it; False when it exists and replace is not asked."""
        ...

    def get_inventory(self, name: str) -> str | None: ...

    def inventories(self) -> list[tuple[str, str]]: ...

    def delete_inventory(self, name: str) -> bool: ...


# milvus: search calls in flight at once per collection and search parameters; searches
# beyond them wait and go to Milvus together (milvus/coalesce.py). One made two callers wait
# for each other (16 % fewer queries/s on two cores); two never do, and merged as well from
# 8 callers (docs/performance.md).
MILVUS_SEARCH_CALLS = 2


@dataclass(frozen=True)
class BackendSettings:
    kind: str = "faiss"
    data_dir: Path = Path("data")  # faiss: where the store and the snapshots live
    milvus_uri: str | None = None  # milvus: a path ending in .db (milvus-lite) or a URL
    milvus_token: str | None = None
    milvus_timeout_s: float = 30.0  # milvus: the deadline of every call to Milvus
    milvus_search_calls: int = MILVUS_SEARCH_CALLS


def open_backend(settings: BackendSettings) -> IndexBackend:
    """The configured backend, open; ValueError for a configuration that cannot work."""
    if settings.kind == "faiss":
        from embedsense.server.index.catalog import Catalog

        return Catalog(settings.data_dir, exclusive=True)
    if settings.kind == "milvus":
        if not settings.milvus_uri:
            raise ValueError(
                "index backend milvus needs a URI (--milvus-uri / EMBEDSENSE_MILVUS_URI): "
                "a milvus-lite file such as ./index.db, or http://host:19530"
            )
        from embedsense.server.index.milvus import MilvusBackend

        return MilvusBackend(
            settings.milvus_uri,
            settings.milvus_token,
            settings.milvus_timeout_s,
            search_calls=settings.milvus_search_calls,
        )
    raise ValueError(f"index backend {settings.kind!r}: expected one of {', '.join(BACKENDS)}")
