"""What a collection accepts: documents and vectors checked against its settings, one error
naming the document and what would be valid. Pure functions of the collection's row."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedsense.proto import MAX_SCROLL_PAGE
from embedsense.proto.values import (
    id_problem,
    metadata_problem,
    string_problem,
    threshold_problem,
)
from embedsense.server.index.errors import DimensionMismatch, InvalidArgument, ModelMismatch
from embedsense.server.index.specs import check_spec
from embedsense.server.index.store import CollectionRow, Document

MAX_K = 10_000
# The longest vector whose l2 distances and inner products stay finite in float32, as FAISS
# and Milvus compute them: |a - b|^2 <= (|a| + |b|)^2 <= float32's largest.
MAX_VECTOR_LENGTH = float(np.sqrt(np.finfo(np.float32).max)) / 2
METADATA_MODES = ("merge", "replace")
METRICS = ("cosine", "ip", "l2")
SEARCH_OPTIONS = ("ef_search", "nprobe")
# The model name of a collection of vectors embedded elsewhere (created with a `dim`): the
# served model's vectors are refused for it (ModelMismatch: FAILED_PRECONDITION).
EXTERNAL_MODEL = "external"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")  # fullmatch: "$" takes a last "\n"


def check_new_collection(name: str, model: str, dim: int, metric: str, index_spec: str) -> None:
    """What any backend asks of a new collection: its name, model, dimension, metric and
    index spec (specs.py's grammar; a backend may take fewer specs, and says so)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
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
    check_spec(index_spec, dim)


def search_options(options: Mapping[str, Any] | None) -> dict[str, int]:
    checked = {}
    for key, value in (options or {}).items():
        if key not in SEARCH_OPTIONS:
            raise InvalidArgument(f"unknown option {key!r}; known: {', '.join(SEARCH_OPTIONS)}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65_536:
            raise InvalidArgument(f"{key} must be an integer in 1-65536, got {value!r}")
        checked[key] = value
    return checked


def check_model(row: CollectionRow, model: str | None) -> None:
    if model is None or model == row.model:
        return
    if row.model == EXTERNAL_MODEL:  # what the caller can do instead
        raise ModelMismatch(
            f"collection {row.name!r} holds vectors embedded elsewhere (model {row.model!r}), "
            f"not by {model!r}: search it by vector, and upsert documents with their vectors"
        )
    raise ModelMismatch(
        f"collection {row.name!r} holds vectors of {row.model!r}, "
        f"not {model!r}: vectors of two models are not comparable"
    )


def validated(row: CollectionRow, doc: Document) -> Document:
    """The document as it will be stored: an id (a new one if none), metadata a dict, its
    vector checked (and normalized for cosine), token vectors checked."""
    doc_id = doc.id if doc.id is not None else uuid.uuid4().hex
    if not isinstance(doc_id, str):
        raise InvalidArgument(f"a document id is a string, got {type(doc_id).__name__}")
    if (wrong := id_problem(doc_id)) is not None:
        raise InvalidArgument(f"document id: {wrong}")
    if doc.metadata is not None:
        checked_metadata(doc.metadata, f"document {doc_id!r}: metadata")
    vector = checked_vectors(row, np.asarray(doc.vector, dtype=np.float32)[None],
                             f"document {doc_id!r}")[0]  # fmt: skip
    tokens, token_vectors = doc.tokens, doc.token_vectors
    if (tokens is None) != (token_vectors is None):
        raise InvalidArgument(f"document {doc_id!r}: tokens and token vectors go together")
    if tokens is not None:
        if not row.store_tokens:
            raise InvalidArgument(
                f"collection {row.name!r} does not store token vectors "
                "(create it with store_tokens=True)"
            )
        token_vectors = np.asarray(token_vectors, dtype=np.float32)
        if token_vectors.shape != (len(tokens), row.dim):
            raise DimensionMismatch(
                f"document {doc_id!r}: token vectors of shape {token_vectors.shape}, "
                f"expected ({len(tokens)}, {row.dim})"
            )
    return Document(text=doc.text, vector=vector, id=doc_id, metadata=dict(doc.metadata or {}),
                    tokens=tokens, token_vectors=token_vectors)  # fmt: skip


def checked_query(
    row: CollectionRow,
    queries: np.ndarray,
    k: int,
    model: str | None,
    *,
    ef_search: int | None = None,
    nprobe: int | None = None,
) -> np.ndarray:
    """A search's query vectors (one, or a row each) checked against the collection, with
    its k, the model it was embedded by and its search options (whatever the index: an
    ef_search of 2**30 made FAISS's HNSW search take gigabytes)."""
    check_model(row, model)
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be within 1-{MAX_K}, got {k}")
    asked = (("ef_search", ef_search), ("nprobe", nprobe))
    search_options({key: value for key, value in asked if value is not None})
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries[None] if queries.ndim == 1 else queries
    return checked_vectors(row, queries, "query", param="vector")


def checked_vectors(
    row: CollectionRow, vectors: np.ndarray, what: str, param: str | None = None
) -> np.ndarray:
    """Rows checked (dimension, finite) and, for cosine, L2-normalized; one pass. `what`
    names them in errors, `param` is the request field they came in."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != row.dim:
        given = (
            f"a {vectors.shape[1]}-dim vector"
            if vectors.ndim == 2
            else (f"a vector of shape {vectors.shape[1:]}")
        )
        raise DimensionMismatch(
            f"{what}: {given}; collection {row.name!r} holds {row.dim}-dim vectors of "
            f"{row.model!r} (expected dimension {row.dim})",
            param,
        )
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"{what}: a vector has NaN or infinite values", param)
    # In float64: float32's squares overflow from components of about 1e19 (the length inf,
    # the vector divided to zeros) and underflow below about 1e-19.
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if row.metric != "cosine":
        if (longest := float(norms.max(initial=0))) > MAX_VECTOR_LENGTH:
            raise InvalidArgument(
                f"{what}: a vector of length {longest:.3g}, whose {row.metric} distances "
                f"overflow float32 (lengths up to {MAX_VECTOR_LENGTH:.3g}): scale it down",
                param,
            )
    else:
        if not norms.all():
            raise InvalidArgument(f"{what}: a zero vector has no direction (cosine)", param)
        off = np.abs(norms - 1) > 1e-6  # unit vectors are stored bit for bit as given
        if off.any():
            vectors = vectors.copy()
            vectors[off] = vectors[off].astype(np.float64) / norms[off, None]
    return np.ascontiguousarray(vectors)


def checked_scroll(limit: int, after: str | None) -> None:
    """A scroll's page size and cursor (the last id of the page before, or None)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidArgument(f"a scroll's limit is an integer, got {limit!r}")
    if not 1 <= limit <= MAX_SCROLL_PAGE:
        raise InvalidArgument(f"a scroll's limit must be within 1-{MAX_SCROLL_PAGE:,}, got {limit}")
    if after is not None and not isinstance(after, str):
        raise InvalidArgument(f"a scroll's cursor is a document id (a string), got {after!r}")
    if after and (wrong := string_problem(after)) is not None:  # a forged cursor's id
        raise InvalidArgument(f"a scroll's cursor: {wrong}")


def checked_threshold(score_threshold: float | None) -> float | None:
    if score_threshold is None:
        return None
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise InvalidArgument(
            f"score_threshold is a number, got {score_threshold!r}", "score_threshold"
        )
    if (wrong := threshold_problem(score_threshold)) is not None:
        raise InvalidArgument(f"score_threshold: {wrong}", "score_threshold")
    # Scores are float32, and so is gRPC's threshold: HTTP's double is rounded the same way,
    # so that both surfaces keep the same hits.
    return float(np.float32(score_threshold))


def checked_patch(ids: Sequence[str], patch: Mapping[str, Any], mode: str) -> list[str]:
    """A metadata update's ids (unique, in order) and patch, checked; InvalidArgument names
    what is wrong."""
    if mode not in METADATA_MODES:
        raise InvalidArgument(f"metadata update mode {mode!r}: expected merge or replace")
    checked_metadata(patch, "patch", "patch")
    if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
        raise InvalidArgument("a metadata update takes a list of document ids (strings)")
    checked_ids(ids)  # an empty one was "takes a list of ids (strings)"
    return list(dict.fromkeys(ids))


def checked_ids(ids: Sequence[str]) -> None:
    """InvalidArgument naming the first id no document can have (upsert refuses it): a read,
    delete or update of one is a caller's mistake, not a document that happens to be
    missing."""
    for i, doc_id in enumerate(ids):
        if (wrong := id_problem(doc_id)) is not None:
            raise InvalidArgument(f"ids[{i}]: {wrong}", "ids")


def checked_metadata(metadata: Any, what: str, param: str | None = None) -> None:
    """Metadata every surface can store, filter on and send back (embedsense.proto.values);
    InvalidArgument names the field and why."""
    if (wrong := metadata_problem(metadata, what)) is not None:
        raise InvalidArgument(wrong, param)


def patched(metadata: Mapping[str, Any], patch: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """The metadata after an update: merge sets the patch's top-level keys (None stores
    null, it does not remove the key); replace makes the patch the metadata."""
    return dict(patch) if mode == "replace" else {**metadata, **patch}
