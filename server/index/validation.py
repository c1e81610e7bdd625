"""What a collection accepts: documents and vectors checked against its settings, one error
naming the document and what would be valid. Pure functions of the collection's row."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import numpy as np

from embedsense.server.index.errors import DimensionMismatch, InvalidArgument, ModelMismatch
from embedsense.server.index.store import CollectionRow, Document

MAX_ID_LENGTH = 256


def check_model(row: CollectionRow, model: str | None) -> None:
    if model is not None and model != row.model:
        raise ModelMismatch(
            f"collection {row.name!r} holds vectors of {row.model!r}, "
            f"not {model!r}: vectors of two models are not comparable"
        )


def validated(row: CollectionRow, doc: Document) -> Document:
    """The document as it will be stored: an id (a new one if none), metadata a dict, its
    vector checked (and normalized for cosine), token vectors checked."""
    doc_id = doc.id if doc.id is not None else uuid.uuid4().hex
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"a document id is a string of 1-{MAX_ID_LENGTH} characters")
    if doc.metadata is not None and not isinstance(doc.metadata, Mapping):
        raise InvalidArgument(f"document {doc_id!r}: metadata must be a JSON object")
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


def checked_vectors(row: CollectionRow, vectors: np.ndarray, what: str) -> np.ndarray:
    """Rows checked (dimension, finite) and, for cosine, L2-normalized; one pass."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != row.dim:
        raise DimensionMismatch(
            f"{what}: a vector of shape {vectors.shape[1:]}; collection {row.name!r} "
            f"holds {row.dim}-dim vectors of {row.model!r}"
        )
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"{what}: a vector has NaN or infinite values")
    if row.metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1)
        if not norms.all():
            raise InvalidArgument(f"{what}: a zero vector has no direction (cosine)")
        off = np.abs(norms - 1) > 1e-6  # unit vectors are stored bit for bit as given
        if off.any():
            vectors = vectors.copy()
            vectors[off] /= norms[off, None]
    return np.ascontiguousarray(vectors)
