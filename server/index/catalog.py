"""The data directory: every collection, opened at start and snapshotted at close.

data_dir/embedsense.sqlite3        the store (documents, vectors, collection settings)
data_dir/snapshots/<name>/*.faiss  one FAISS snapshot per collection (rebuildable)
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedsense.server.index.collection import Collection, CollectionInfo
from embedsense.server.index.errors import CollectionExists, CollectionNotFound, InvalidArgument
from embedsense.server.index.faiss_index import METRICS, new_index
from embedsense.server.index.store import CollectionRow, Store

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SEARCH_OPTIONS = ("ef_search", "nprobe")


class Catalog:
    def __init__(self, data_dir: Path | str, synchronous: str = "FULL") -> None:
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir / "embedsense.sqlite3", synchronous)
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        for row in self.store.collections():
            self._collections[row.name] = Collection(
                self.store, row, self._snapshot_dir(row.name)
            ).open()

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
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(
                f"collection name {name!r}: 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        if not model:
            raise InvalidArgument("a collection needs the name of the model of its vectors")
        if not isinstance(dim, int) or not 1 <= dim <= 65_536:
            raise InvalidArgument(f"dimension {dim!r}: expected an integer in 1-65536")
        if metric not in METRICS:
            raise InvalidArgument(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
        new_index(index_spec, dim, metric)  # a bad spec fails here, before anything is stored
        options = _search_options(options)
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
        return [c.info() for c in sorted(self._collections.values(), key=lambda c: c.name)]

    def describe(self, name: str) -> CollectionInfo:
        return self.get(name).info()

    def drop(self, name: str) -> None:
        with self._lock:
            collection = self.get(name)
            collection.optimizer.close()  # let its maintenance finish, start no more
            with collection._writer:  # let a write in progress finish first
                self.store.drop_collection(name)
                del self._collections[name]
            shutil.rmtree(self._snapshot_dir(name), ignore_errors=True)

    def reindex(
        self, name: str, index_spec: str, options: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        collection = self.get(name)
        collection.reindex(index_spec, _search_options(options))
        return collection.info()

    def close(self) -> None:
        """Snapshot every collection (so the next start loads instead of rebuilding)."""
        for collection in self._collections.values():
            collection.close()
        self.store.close()


def _search_options(options: Mapping[str, Any] | None) -> dict[str, int]:
    checked = {}
    for key, value in (options or {}).items():
        if key not in SEARCH_OPTIONS:
            raise InvalidArgument(f"unknown option {key!r}; known: {', '.join(SEARCH_OPTIONS)}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65_536:
            raise InvalidArgument(f"{key} must be an integer in 1-65536, got {value!r}")
        checked[key] = value
    return checked
