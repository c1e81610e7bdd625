"""The data directory: every collection, opened at start and snapshotted at close.

data_dir/embedsense.sqlite3        the store (documents, vectors, collection settings)
data_dir/snapshots/<name>/*.faiss  one FAISS snapshot per collection (rebuildable)
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedsense.server.index.collection import Collection, CollectionInfo
from embedsense.server.index.data_lock import DataDirLock
from embedsense.server.index.errors import CollectionExists, CollectionNotFound
from embedsense.server.index.faiss_index import new_index
from embedsense.server.index.store import CollectionRow, Store
from embedsense.server.index.validation import check_new_collection, search_options

log = logging.getLogger(__name__)


class Catalog:
    """The `faiss` index backend (see backend.py): FAISS indexes over one SQLite store."""

    kind = "faiss"

    def __init__(
        self, data_dir: Path | str, synchronous: str = "FULL", exclusive: bool = False
    ) -> None:
        """exclusive: hold the directory against any other server (a server's catalog;
        tests open one directory twice to play another process)."""
        self.data_dir = Path(data_dir)
        self._dir_lock = DataDirLock(self.data_dir) if exclusive else None
        try:
            self.store = Store(self.data_dir / "embedsense.sqlite3", synchronous)
            self._lock = threading.Lock()
            self._collections: dict[str, Collection] = {}
            for row in self.store.collections():
                self._collections[row.name] = Collection(
                    self.store, row, self._snapshot_dir(row.name)
                ).open()
        except BaseException:
            if self._dir_lock is not None:
                self._dir_lock.release()
            raise

    def _snapshot_dir(self, name: str) -> Path:
        return self.data_dir / "snapshots" / name

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
    ) -> CollectionInfo:
        check_new_collection(name, model, dim, metric, index_spec)
        new_index(index_spec, dim, metric)  # FAISS builds it, before anything is stored
        options = search_options(options)
        with self._lock:
            if name in self._collections:
                raise CollectionExists(f"collection {name!r} already exists")
            row = CollectionRow(
                name, model, dim, metric, index_spec, store_tokens, options, time.time(), 0, 0
            )
            self.store.add_collection(row)
            shutil.rmtree(self._snapshot_dir(name), ignore_errors=True)  # left by a crash
            collection = Collection(self.store, row, self._snapshot_dir(name)).open()
            self._collections[name] = collection
        return collection.info()

    def get(self, name: str) -> Collection:
        try:
            return self._collections[name]
        except KeyError:
            raise CollectionNotFound(f"no collection named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._collections)

    def list(self) -> list[CollectionInfo]:
        """Every collection's details; one dropped while they are read is left out."""
        listed = []
        for collection in sorted(self._collections.values(), key=lambda c: c.name):
            try:
                listed.append(collection.info())
            except CollectionNotFound:
                continue
        return listed

    def describe(self, name: str) -> CollectionInfo:
        return self.get(name).info()

    def drop(self, name: str) -> None:
        with self._lock:
            self.get(name).drop()
            del self._collections[name]

    def reindex(
        self, name: str, index_spec: str, options: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        collection = self.get(name)
        collection.reindex(index_spec, search_options(options))
        return collection.info()

    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        return self.store.put_inventory(name, words_json, replace)

    def get_inventory(self, name: str) -> str | None:
        return self.store.get_inventory(name)

    def inventories(self) -> list[tuple[str, str]]:
        return self.store.inventories()

    def delete_inventory(self, name: str) -> bool:
        return self.store.delete_inventory(name)

    def close(self) -> None:
        """Snapshot every collection (so the next start loads instead of rebuilding)."""
        for collection in self._collections.values():
            collection.close()
        self.store.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
