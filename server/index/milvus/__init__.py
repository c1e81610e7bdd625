"""The `milvus` index backend, one job per module: `backend.py` (collections and inventories
across replicas), `collection.py` (one collection's documents and searches), `versions.py`
(token rows replaced without losing them), `filters.py` (metadata filters and word grams as
Milvus expressions), `schema.py` (names, schemas, index specs), `optimize.py` (a bulk load
merged, indexed and served), `calls.py` (deadlines, consistency and error classes of every
Milvus call), `coalesce.py` (searches made at the same time as one Milvus call)."""

from embedsense.server.index.milvus.backend import MilvusBackend
from embedsense.server.index.milvus.collection import MilvusCollection
from embedsense.server.index.milvus.filters import milvus_expression, typed
from embedsense.server.index.milvus.schema import milvus_index

__all__ = ["MilvusBackend", "MilvusCollection", "milvus_expression", "milvus_index", "typed"]
