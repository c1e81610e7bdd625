"""The `milvus` index backend: collections in Milvus, through pymilvus' MilvusClient.

The same code serves an embedded milvus-lite file (`./index.db`) and a Milvus server or
cluster (`http://host:19530`, with a token when it asks for one): MilvusClient gives us that,
and this package adds nothing that depends on which. Every encoder server pointed at the same
URI sees the same collections and inventories; none keeps state of its own but a cache of
collection settings, checked against the meta rows at least every RECHECK_S and as soon as
Milvus says a collection is gone.

Creating and dropping, from any number of replicas at once (schema.py names the parts):
- create: refused when the meta row exists; else a new incarnation's Milvus collections, then
  the alias claim (atomic in Milvus: one of two replicas creating the name at once wins, the
  other drops what it made and answers "exists"), then the meta row. A claim whose meta row
  never came (a replica that died mid-create) is taken over after CLAIM_GRACE_S.
- drop: the meta row first (no replica opens the collection after), then the alias, then the
  Milvus collections; of the incarnation the meta row names, not of a cached one.

Inventories are a meta row each, claimed the same way: creating one (not a replace) is
refused when its row exists; else its claim (schema.py), then the row. Of two replicas
creating one name at once, the one whose claim Milvus refused answers "exists"; a claim
without a row after CLAIM_GRACE_S is taken over. Deleting removes the claim, then the row
(while the row is there, no create claims the name). A replace writes the row, claimed or
not, so a create racing a replace may store its inventory after the replace's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial
from typing import Any

from pymilvus import MilvusException

from embedsense.server.index.backend import MILVUS_SEARCH_CALLS
from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.errors import (
    CollectionExists,
    CollectionNotFound,
    IndexStoreError,
    IndexUnavailable,
    InvalidArgument,
)
from embedsense.server.index.milvus.calls import (
    MilvusAliasMissing,
    MilvusAliasTaken,
    MilvusCalls,
    open_client,
)
from embedsense.server.index.milvus.coalesce import SearchStats
from embedsense.server.index.milvus.collection import MilvusCollection
from embedsense.server.index.milvus.filters import literal, literal_list
from embedsense.server.index.milvus.schema import (
    MAX_VARCHAR,
    META,
    InventoryClaim,
    Layout,
    documents_schema,
    meta_schema,
    milvus_index,
    new_incarnation,
    tokens_schema,
)
from embedsense.server.index.milvus.versions import MAX_ROWS_PER_QUERY
from embedsense.server.index.store import CollectionRow
from embedsense.server.index.validation import check_new_collection, search_options

log = logging.getLogger(__name__)

RECHECK_S = 1.0  # a cached collection older than this is checked against its meta row
CLAIM_GRACE_S = 120.0  # a create takes seconds: a claim this old without a meta row is dead


def meta_words(key: str) -> str:
    """A meta row's key as errors name it: "collection 'notes'" for "collection:notes",
    "every collection" for the prefix "collection:"."""
    kind, _, name = key.partition(":")
    return f"{kind} {name!r}" if name else f"every {kind}"


class MilvusBackend:
    """The `milvus` index backend (see backend.py)."""

    kind = "milvus"

    def __init__(
        self,
        uri: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        search_calls: int = MILVUS_SEARCH_CALLS,
    ) -> None:
        self.uri = uri
        self.search_calls = search_calls
        try:
            client = open_client(uri, token or "", timeout_s)
        except MilvusException as err:
            raise IndexUnavailable(f"milvus at {uri}: {err.message}") from err
        self.calls = MilvusCalls(client, timeout_s)
        if not self.calls("open the meta rows", "has_collection", META):
            self._create_meta()
        self._lock = threading.Lock()
        self._open: dict[str, MilvusCollection] = {}

    def _create_meta(self) -> None:
        schema, index = meta_schema()
        try:
            self.calls.create_collection("create the meta rows", META, schema, index, "Bounded")
        except Exception:
            if not self.calls("open the meta rows", "has_collection", META):
                raise  # not another replica that made it first
            log.info("another replica created %s first", META)

    # ------------------------------------------------------------ meta rows

    def _meta_get(self, key: str) -> str | None:
        what = f"read {meta_words(key)}"
        rows = self.calls.query(what, META, f"key == {literal(key)}", ["value"])
        return rows[0]["value"] if rows else None

    @staticmethod
    def _check_meta_value(key: str, value: str) -> None:
        if len(value.encode()) > MAX_VARCHAR:
            raise InvalidArgument(
                f"{meta_words(key)}: {len(value.encode())} bytes; the milvus backend "
                f"keeps at most {MAX_VARCHAR}"
            )

    def _meta_put(self, key: str, value: str) -> None:
        self._check_meta_value(key, value)
        what = f"write {meta_words(key)}"
        self.calls(what, "upsert", META, [{"key": key, "value": value, "vector": [0.0, 0.0]}])
        self.calls.settle(what, (META, "key"))

    def _meta_delete(self, key: str) -> None:
        what = f"delete {meta_words(key)}"
        self.calls(what, "delete", META, filter=f"key in {literal_list([key])}")
        self.calls.settle(what, (META, "key"))

    def _meta_keys(self, prefix: str) -> list[tuple[str, str]]:
        rows = self.calls.query(
            f"list {meta_words(prefix)}",
            META,
            f"key like {literal(prefix + '%')}",  # prefixes are constants, no wildcards
            ["key", "value"],
            limit=MAX_ROWS_PER_QUERY,
        )
        return sorted((row["key"][len(prefix) :], row["value"]) for row in rows)

    @staticmethod
    def _parse(value: str) -> tuple[CollectionRow, Layout]:
        stored = json.loads(value)
        incarnation = stored.pop("incarnation", "")  # "": made before incarnations
        row = CollectionRow(**stored)
        return row, Layout(row.name, incarnation)

    def _stored(self, name: str) -> tuple[CollectionRow, Layout] | None:
        value = self._meta_get(f"collection:{name}")
        return None if value is None else self._parse(value)

    # ------------------------------------------------------------ collections

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
        milvus_index(index_spec)  # refused before anything is made
        row = CollectionRow(
            name,
            model,
            dim,
            metric,
            index_spec,
            store_tokens,
            search_options(options),
            time.time(),
            0,
            0,
        )
        with self._lock:
            if self._stored(name) is not None:
                raise CollectionExists(f"collection {name!r} already exists")
            layout = Layout(name, new_incarnation())
            self._make(row, layout)
            try:
                self._claim(layout)
            except BaseException:
                self._unmake(layout)
                raise
            self._meta_put(
                f"collection:{name}", json.dumps({**asdict(row), "incarnation": layout.incarnation})
            )
            collection = self._open[name] = self._collection(row, layout)
        return collection.info()

    def _collection(self, row: CollectionRow, layout: Layout) -> MilvusCollection:
        return MilvusCollection(self.calls, row, layout, self.search_calls)

    def _make(self, row: CollectionRow, layout: Layout) -> None:
        what = f"create collection {row.name!r}"
        schema, index = documents_schema(row, layout)
        self.calls.create_collection(what, layout.docs, schema, index, "Bounded")
        if row.store_tokens:
            schema, index = tokens_schema(row)
            self.calls.create_collection(what, layout.tokens, schema, index, "Bounded")

    def _unmake(self, layout: Layout) -> None:
        for collection in (layout.docs, layout.tokens):
            self.calls(f"drop collection {layout.name!r}", "drop_collection", collection)

    def _claim(self, layout: Layout) -> None:
        """The alias names this incarnation, or CollectionExists (module docstring)."""
        what = f"create collection {layout.name!r}"
        take_over = partial(self._take_over_dead_claim, layout)
        if not self._take_alias(what, layout.docs, layout.alias, take_over):
            raise CollectionExists(
                f"collection {layout.name!r} already exists (another replica is creating it)"
            )

    def _take_alias(
        self, what: str, target: str, alias: str, take_over_dead: Callable[[], bool]
    ) -> bool:
        """Whether `alias` names `target` now. Milvus refuses an alias that names another
        collection: then `take_over_dead()` says whether that claim was dead and is gone,
        and the alias is asked for once more."""
        for attempt in range(2):
            try:
                self.calls(what, "create_alias", target, alias)
                return True
            except MilvusAliasTaken:
                if attempt or not take_over_dead():
                    return False
        return False

    def _alias_target(self, what: str, alias: str) -> str | None:
        """The collection `alias` names; None when there is no such alias."""
        try:
            return self.calls(what, "describe_alias", alias)["collection_name"]
        except MilvusAliasMissing:
            return None

    def _take_over_dead_claim(self, layout: Layout) -> bool:
        what = f"create collection {layout.name!r}"
        target = self._alias_target(what, layout.alias)
        if target is None:
            return True  # released meanwhile: claim it again
        if self._stored(layout.name) is not None:
            return False
        if time.time() - Layout.born(target) < CLAIM_GRACE_S:
            return False  # a create in progress elsewhere
        log.warning(
            "collection %r: taking over the claim of a create that never finished (%s)",
            layout.name,
            target,
        )
        self.calls(what, "drop_alias", layout.alias)
        for collection in (target, target.replace("_c_", "_t_", 1)):
            self.calls(what, "drop_collection", collection)
        return True

    def get(self, name: str) -> MilvusCollection:
        with self._lock:
            cached = self._open.get(name)
        if cached and not cached.gone and time.monotonic() - cached.checked_at < RECHECK_S:
            return cached
        stored = self._stored(name)  # another replica may have made, dropped or re-made it
        if stored is None:
            with self._lock:
                self._open.pop(name, None)
            raise CollectionNotFound(f"no collection named {name!r}")
        row, layout = stored
        with self._lock:
            cached = self._open.get(name)
            if cached and not cached.gone and cached.layout == layout:
                cached.checked_at = time.monotonic()
                return cached
            if cached:  # its incarnation is gone: every later call through it says so
                cached.gone = True
            collection = self._open[name] = self._collection(row, layout)
            return collection

    def names(self) -> list[str]:
        return [name for name, _ in self._meta_keys("collection:")]

    def search_stats(self) -> dict[str, SearchStats]:
        """The search counters of each collection this process has open, read without
        Milvus (for /metrics, Milvus away or not)."""
        opened = self._open.copy()  # not under _lock, which a create holds while Milvus answers
        return {name: c.search_stats() for name, c in opened.items() if not c.gone}

    def list(self) -> list[CollectionInfo]:
        infos = []
        for name in self.names():
            try:
                infos.append(self.get(name).info())
            except CollectionNotFound:  # dropped by another replica meanwhile
                continue
        return infos

    def drop(self, name: str) -> None:
        stored = self._stored(name)  # the incarnation the meta row names, not a cached one
        if stored is None:
            raise CollectionNotFound(f"no collection named {name!r}")
        row, layout = stored
        with self._lock:
            cached = self._open.get(name)
        collection = cached if cached and cached.layout == layout else self._collection(row, layout)
        with collection.dropping():
            self._meta_delete(f"collection:{name}")
            if layout.incarnation:
                self.calls(f"drop collection {name!r}", "drop_alias", layout.alias)
            self._unmake(layout)
            with self._lock:
                stale = self._open.pop(name, None)
            if stale is not None:
                stale.gone = True

    def close(self) -> None:
        self.calls.client.close()

    # ------------------------------------------------------------ inventories

    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        key = f"inventory:{name}"
        self._check_meta_value(key, words_json)
        if replace:
            self._meta_put(key, words_json)
            return True
        if self._meta_get(key) is not None or (target := self._claim_inventory(name)) is None:
            return False
        try:
            self._meta_put(key, words_json)
        except BaseException:
            # Else the caller's retry would be told "exists" until the claim is taken over.
            self._release_inventory(name, target, quietly=True)
            raise
        return True

    def _claim_inventory(self, name: str) -> str | None:
        """The collection of this create's claim on the name, now held (module docstring);
        None when another replica's claim stands."""
        what = f"create inventory {name!r}"
        claim = InventoryClaim(name)
        target = claim.target(new_incarnation())
        try:
            self.calls(what, "create_collection", target, schema=meta_schema()[0])
            take_over = partial(self._take_over_dead_inventory_claim, name)
            if self._take_alias(what, target, claim.alias, take_over):
                return target
        except BaseException:
            self._release_inventory(name, target, quietly=True)
            raise
        self._release_inventory(name, target, quietly=True)
        return None

    def _take_over_dead_inventory_claim(self, name: str) -> bool:
        target = self._inventory_claimed_by(name)
        if target is None:
            return True  # released meanwhile: claim it again
        born = Layout.born(target)
        if self._meta_get(f"inventory:{name}") is not None or time.time() - born < CLAIM_GRACE_S:
            return False
        log.warning("inventory %r: taking over the claim of a create that never finished", name)
        self._release_inventory(name, target)
        return True

    def _inventory_claimed_by(self, name: str) -> str | None:
        """The collection the inventory's claim names; None when unclaimed (inventories
        made before claims, or by a replace)."""
        return self._alias_target(
            f"read the claim on inventory {name!r}", InventoryClaim(name).alias
        )

    def _release_inventory(self, name: str, target: str, quietly: bool = False) -> None:
        """Drop a claim's collection, and the alias if it names that one (a claim another
        create made meanwhile stays); then the claims of earlier creates left behind (an
        error between their steps) older than CLAIM_GRACE_S. `quietly`: a failure is
        logged, not raised (the caller's own error, or answer, matters more)."""
        what = f"release the claim on inventory {name!r}"
        try:
            # Milvus drops an alias with its collection only later: asked for the name at
            # once, it would still refuse it. Two replicas taking one dead claim over at the
            # same moment, between this read and the drop, could still both claim the name.
            if self._inventory_claimed_by(name) == target:
                self.calls(what, "drop_alias", InventoryClaim(name).alias)
            self.calls(what, "drop_collection", target)
            claimed = self._inventory_claimed_by(name)
            prefix = InventoryClaim(name).target("")
            for left in self.calls(what, "list_collections"):
                if not left.startswith(prefix) or left == claimed:
                    continue
                if time.time() - Layout.born(left) > CLAIM_GRACE_S:
                    self.calls(what, "drop_collection", left)
        except IndexStoreError:
            if not quietly:
                raise
            log.warning("%s: left for a later delete or create of it", what, exc_info=True)

    def get_inventory(self, name: str) -> str | None:
        return self._meta_get(f"inventory:{name}")

    def inventories(self) -> list[tuple[str, str]]:
        return self._meta_keys("inventory:")

    def delete_inventory(self, name: str) -> bool:
        if self._meta_get(f"inventory:{name}") is None:
            return False
        # The claim first: while the row is there, no create gets as far as claiming.
        if (target := self._inventory_claimed_by(name)) is not None:
            self._release_inventory(name, target)
        self._meta_delete(f"inventory:{name}")
        return True
