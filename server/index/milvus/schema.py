"""How an embedsense collection is laid out in Milvus: names, schemas and index specs.

- `embedsense_meta`: one row per collection (its settings and incarnation, as JSON) and per
  named sense inventory. Milvus wants a vector in every collection; this one carries a dummy.
- `embedsense_c_<hash>_<incarnation>`: the documents. Primary key the document id; the
  sentence vector; the text (at most 65,535 UTF-8 bytes, Milvus's VARCHAR limit); the
  metadata as given; a typed copy of it for filters (filters.py); the version of its token
  rows; and, with token vectors, its character grams (filters.py).
- `embedsense_t_<hash>_<incarnation>` (collections with store_tokens): one row per token —
  document id, version, position, token text, character offsets and the token's vector. A
  row per token, not an array per document: Milvus arrays hold 4,096 numbers at most, a
  512-token text has 196,608, and token rows can be fetched for exactly the documents a word
  occurs in (versions.py says how they are replaced).
- `embedsense_a_<hash>`: an alias of the current incarnation's documents. Creating it is the
  one step of a create that Milvus does atomically, so it decides which of two replicas
  creating the same name at once wins.
- `embedsense_i_<hash>`: an inventory's claim, the same way: an alias of an empty
  `embedsense_ic_<hash>_<incarnation>` of the create that made it (an alias of the meta rows
  would not do: Milvus makes an alias again, without an error, for the same collection).

Each create makes a new incarnation, so a replica still holding a dropped collection's
settings addresses Milvus collections that no longer exist: its late writes fail instead of
landing in the new collection of the same name. Collections made before incarnations
(incarnation "") keep their old names and find words with LIKE.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass

from pymilvus import DataType, MilvusClient

from embedsense.server.index.errors import InvalidArgument
from embedsense.server.index.milvus.filters import MAX_GRAM_BYTES, MAX_GRAMS
from embedsense.server.index.store import CollectionRow

PREFIX = "embedsense_"
META = PREFIX + "meta"
MAX_VARCHAR = 65_535
METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}


def milvus_index(spec: str) -> tuple[str, dict[str, int]]:
    """A FAISS factory string the faiss backend takes (specs.py checked it), as a Milvus
    index type and params: Flat, HNSW<M>, IVF<n>,Flat and IVF<n>,PQ<m>; others are refused,
    naming these."""
    if spec == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"HNSW(\d+)", spec):
        return "HNSW", {"M": int(m[1]), "efConstruction": 200}
    if m := re.fullmatch(r"IVF(\d+),Flat", spec):
        return "IVF_FLAT", {"nlist": int(m[1])}
    if m := re.fullmatch(r"IVF(\d+),PQ(\d+)", spec):
        return "IVF_PQ", {"nlist": int(m[1]), "m": int(m[2]), "nbits": 8}
    raise InvalidArgument(
        f"index spec {spec!r}: the milvus backend takes Flat, HNSW<M>, IVF<n>,Flat or "
        "IVF<n>,PQ<m>, for example HNSW32, IVF256,Flat, IVF256,PQ16",
        "index",
    )


def name_hash(name: str) -> str:
    """What stands for a name in Milvus's names, which allow letters, digits and _ only."""
    return hashlib.sha1(name.encode()).hexdigest()[:24]


def new_incarnation() -> str:
    """Unique, and starting with its birth time in hex seconds (see `Layout.born`)."""
    return f"{int(time.time()):08x}{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Layout:
    """The Milvus collections of one incarnation of an embedsense collection."""

    name: str
    incarnation: str

    @property
    def _hash(self) -> str:
        return name_hash(self.name)

    @property
    def _suffix(self) -> str:
        return f"_{self.incarnation}" if self.incarnation else ""

    @property
    def docs(self) -> str:
        return f"{PREFIX}c_{self._hash}{self._suffix}"

    @property
    def tokens(self) -> str:
        return f"{PREFIX}t_{self._hash}{self._suffix}"

    @property
    def alias(self) -> str:
        return f"{PREFIX}a_{self._hash}"

    @property
    def has_grams(self) -> bool:
        return bool(self.incarnation)

    @staticmethod
    def born(docs_collection: str) -> float:
        """When the incarnation whose documents collection this is was made (0: unknown)."""
        incarnation = docs_collection.rpartition("_")[2]
        try:
            return float(int(incarnation[:8], 16)) if len(incarnation) == 16 else 0.0
        except ValueError:
            return 0.0


@dataclass(frozen=True)
class InventoryClaim:
    """An inventory's claim: an alias, of a small empty collection of the claiming
    create's own (Milvus refuses an alias that names another collection, so of two creates
    of one name one claim stands; backend.py)."""

    name: str

    @property
    def alias(self) -> str:
        return f"{PREFIX}i_{name_hash(self.name)}"

    def target(self, incarnation: str) -> str:
        return f"{PREFIX}ic_{name_hash(self.name)}_{incarnation}"


def meta_schema() -> tuple[object, object]:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("value", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants one
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="L2")
    return schema, index


def documents_schema(row: CollectionRow, layout: Layout) -> tuple[object, object]:
    index_type, params = milvus_index(row.index_spec)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=row.dim)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("filterable", DataType.JSON)
    schema.add_field("tokens_version", DataType.VARCHAR, max_length=64)
    if row.store_tokens and layout.has_grams:
        schema.add_field(
            "grams",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_GRAMS,
            max_length=MAX_GRAM_BYTES,
        )
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type=index_type, metric_type=METRICS[row.metric], params=params)
    return schema, index


def tokens_schema(row: CollectionRow) -> tuple[object, object]:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=256)
    schema.add_field("version", DataType.VARCHAR, max_length=64)
    schema.add_field("position", DataType.INT64)
    schema.add_field("token", DataType.VARCHAR, max_length=1024)
    schema.add_field("start", DataType.INT64)
    schema.add_field("end", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=row.dim)
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    return schema, index
