"""The bulk path of `encode` and `upsert`, once for both clients: documents and their ids,
batches within the server's limit, which batch may be sent next, progress, and the joined
answer or the error that says what was stored.

No I/O here. `Client` runs a `Plan` with threads and `AsyncClient` with tasks; the two differ
only in how a call is made and how one in flight is cancelled.
"""

from __future__ import annotations

import itertools
import json
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from embedsense.client.errors import EmbedSenseError, ResourceExhausted
from embedsense.client.messages import message
from embedsense.proto import MAX_SCROLL_PAGE
from embedsense.proto.ids import content_id
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.values import (
    blank_problem,
    id_problem,
    length_problem,
    metadata_problem,
    text_problem,
)

T = TypeVar("T")
Document = str | Mapping[str, Any]


def at_least_one(name: str, value: int) -> int:
    """`value`, when it is an int >= 1; otherwise a ValueError naming it (a count of zero
    would send nothing, or wait forever for a free slot)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected an int, at least 1")
    return value


def smaller_page(error: ResourceExhausted, batch_size: int) -> int:
    """The page to ask for after `error` on a scroll page of `batch_size`: half of it where
    the reply was too large (documents with large texts or metadata); else `error` raised."""
    if not error.reply_too_large or batch_size == 1:
        raise error
    return batch_size // 2


def scroll_batch(batch_size: int) -> int:
    """A scroll's batch_size, checked here: past the server's page limit, its error would
    name the request's field (limit), not the caller's."""
    at_least_one("batch_size", batch_size)
    if batch_size > MAX_SCROLL_PAGE:
        raise ValueError(
            f"batch_size={batch_size}: a scroll fetches 1 to {MAX_SCROLL_PAGE:,} documents "
            "at a time"
        )
    return batch_size


def needs_server_limit(batch_size: int, total: int | None) -> bool:
    """Whether the server's texts-per-request limit may matter: a request could hold more
    than one item (a list within one batch_size may still be over the server's limit)."""
    return min(batch_size, total if total is not None else batch_size) > 1


def within_limit(batch_size: int, limit: int) -> int:
    return max(1, min(batch_size, limit))


def id_batches(ids: list[str], limit: int) -> list[list[str]]:
    """`ids` in requests of at most `limit` (the server's max_texts_per_request), in order;
    no ids are one request of none, which the server answers (none, or NOT_FOUND for a
    collection that does not exist)."""
    size = max(1, limit)  # a server that reports no limit (0) still gets one id at a time
    return [ids[start : start + size] for start in range(0, len(ids), size)] or [[]]


# ------------------------------------------------------------------ documents


def to_document(doc: Document | pb.Document, *, embedded: bool = True) -> pb.Document:
    """A str is a text; a mapping has "text" and optionally "id" and "metadata". A document
    without an id gets `content_id`. Checked as the server checks it (a ValueError, or a
    TypeError for a value of the wrong kind), so that a list is refused whole before any of
    it is sent. `embedded`: its text is to be embedded (it has no vector of its own), so it
    may not be empty."""
    if isinstance(doc, pb.Document):
        return doc
    if isinstance(doc, str):
        _check_text(doc, embedded)
        built = message(pb.Document, text=doc, metadata_json="{}")
        built.id = content_id(doc, {})
        return built
    if not isinstance(doc, Mapping) or "text" not in doc:
        raise ValueError(f"a document is a str or a dict with 'text', got {doc!r:.80}")
    unknown = set(doc) - {"id", "text", "metadata"}
    if unknown:
        raise ValueError(
            f"unknown document fields {sorted(unknown)}: expected id, text, metadata, vector"
        )
    if isinstance(doc["text"], str):  # another kind is message()'s TypeError, naming "text"
        _check_text(doc["text"], embedded)
    metadata = doc.get("metadata") or {}
    if (wrong := metadata_problem(metadata, "metadata")) is not None:
        raise ValueError(wrong)
    given = doc.get("id")
    has_id = given is not None and given != ""  # an id of 0 is an id
    built = message(pb.Document, id=id_text(given, "id") if has_id else "", text=doc["text"],
                    metadata_json=json.dumps(metadata, ensure_ascii=False))  # fmt: skip
    if not has_id:
        built.id = content_id(doc["text"], metadata)
    return built


def id_text(value: Any, where: str) -> str:
    """A document id as sent: a str, or an integer (numpy's too) as its digits, as the server
    would store it; a bool, a float or anything else is a TypeError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, str | numbers.Integral):
        raise TypeError(f"{where}: an id is a str (or an int), got {value!r:.40}")
    text = str(value)
    if (wrong := id_problem(text)) is not None:
        raise ValueError(f"{where}: {wrong}")
    return text


def _check_text(text: str, embedded: bool) -> None:
    if (wrong := (blank_problem(text) if embedded else None) or text_problem(text)) is not None:
        raise ValueError(f"text: {wrong}")


def documents_source(
    documents: Iterable[Document],
) -> list[pb.Document] | Iterator[pb.Document]:
    """The documents as messages with their ids. A sequence is checked and given its ids
    whole, before anything is sent (a list comes back); any other iterable is read as the
    batches go, once (an iterator comes back)."""
    if isinstance(documents, str | bytes):
        raise TypeError("documents: a list of texts or dicts, not one str")
    if isinstance(documents, Mapping):
        raise TypeError("documents: a list of texts or dicts, not one dict (wrap it: [doc])")
    if isinstance(documents, Sequence):
        return list(map(_numbered_document, enumerate(documents)))
    return map(_numbered_document, enumerate(documents))


def within_text_limit(
    documents: list[pb.Document] | Iterator[pb.Document], max_chars: int
) -> list[pb.Document] | Iterator[pb.Document]:
    """`documents`, their texts checked against the server's max_text_chars (0: a server
    that does not say): a list whole, before anything is sent; an iterator as it is read."""
    if not max_chars:
        return documents
    if isinstance(documents, list):
        for i, doc in enumerate(documents):
            _within(doc, i, max_chars)
        return documents
    return (_within(doc, i, max_chars) for i, doc in enumerate(documents))


def _within(doc: pb.Document, i: int, max_chars: int) -> pb.Document:
    if (wrong := length_problem(doc.text, max_chars)) is not None:
        raise ValueError(f"documents[{i}]: text: {wrong}")
    return doc


def _numbered_document(numbered: tuple[int, Document]) -> pb.Document:
    """to_document, its errors naming the document: documents[i]."""
    i, doc = numbered
    try:
        return to_document(doc)
    except (ValueError, TypeError) as err:
        raise type(err)(f"documents[{i}]: {err}") from None


def last_writes(docs: Sequence[pb.Document]) -> list[pb.Document]:
    """Each id once: its last occurrence, where that one stands. What one stream of the
    documents in order would leave stored; the server refuses an id twice in one message."""
    last = {doc.id: i for i, doc in enumerate(docs)}
    return [doc for i, doc in enumerate(docs) if last[doc.id] == i]


# ------------------------------------------------------------------ batches


@dataclass(frozen=True)
class Batch:
    """One request of a bulk call. `size`: the input items it covers (what progress counts).
    `ids`: one per input document, in order; `keys`: the ids it writes."""

    number: int
    request: Any
    size: int
    ids: tuple[str, ...] = ()
    keys: frozenset[str] = frozenset()


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def embed_batches(
    texts: Sequence[str], size: int, request: Callable[[Sequence[str]], Any]
) -> Iterator[Batch]:
    for number, start in enumerate(range(0, len(texts), size)):
        chunk = texts[start : start + size]
        yield Batch(number, request(chunk), len(chunk))


def upsert_batches(
    collection: str,
    documents: Iterable[pb.Document],
    size: int,
    priority: int = pb.PRIORITY_UNSPECIFIED,
) -> Iterator[Batch]:
    """UpsertRequests of `size` documents. No documents still make one empty request: it
    checks that the collection exists, as a call with documents would."""
    number = -1
    for number, chunk in enumerate(chunks(documents, size)):
        ids = tuple(doc.id for doc in chunk)
        request = pb.UpsertRequest(
            collection=collection, documents=last_writes(chunk), priority=priority
        )
        yield Batch(number, request, len(chunk), ids, frozenset(ids))
    if number < 0:
        yield Batch(0, pb.UpsertRequest(collection=collection, priority=priority), 0)


class Plan:
    """Which batch to send next, and what the whole call came to.

    Batches go in order, at most `limit` in flight, and never while a batch writing one of
    the same ids is in flight: the later write of an id is sent once the earlier one is
    stored, so the last write wins, as in one stream. After the first failure no batch is
    sent. What happens to those in flight is the runner's choice: an encode cancels them (no
    answer is wanted any more), an upsert lets them land (a write cancelled mid-way may or
    may not be stored, and the error must say exactly what is).
    """

    def __init__(
        self,
        batches: Iterable[Batch],
        limit: int,
        progress: Callable[[int], object] | None = None,
        total: int | None = None,
        count: int | None = None,
        ids: list[str] | None = None,
    ) -> None:
        """total: the input items, when known; count: the batches, when known; ids: every
        input document's id, when known before the batches are read."""
        self.limit = at_least_one("max_concurrent_batches", limit)
        self.total, self.count, self.ids = total, count, ids
        self._batches = iter(batches)
        self._progress = progress
        self._waiting: Batch | None = None  # read, not sent: it writes an id in flight
        self._in_flight: dict[int, Batch] = {}
        self.read: list[Batch] = []  # every batch taken from the source, in order
        self.results: dict[int, Any] = {}  # batch number -> its answer
        self.error: BaseException | None = None  # the first failure

    @property
    def sequential(self) -> bool:
        """One batch at a time anyway: a runner may make the calls without threads."""
        return self.limit == 1 or self.count == 1

    def next(self) -> Batch | None:
        """The batch to send now, or None: the limit is reached, the next batch waits for
        one in flight, the call has failed, or every batch was sent. While any is in flight,
        a None may turn into a batch once one finishes."""
        if self.error is not None or len(self._in_flight) >= self.limit:
            return None
        if self._waiting is None:
            try:
                self._waiting = next(self._batches, None)
            except Exception as err:  # not a document, or the caller's iterator failed
                self.error = err
                return None
            if self._waiting is None:
                return None
            self.read.append(self._waiting)
        if any(self._waiting.keys & batch.keys for batch in self._in_flight.values()):
            return None
        batch, self._waiting = self._waiting, None
        self._in_flight[batch.number] = batch
        return batch

    def done(self, batch: Batch, result: Any) -> None:
        del self._in_flight[batch.number]
        self.results[batch.number] = result
        if self._progress is not None:
            self._progress(batch.size)

    def failed(self, batch: Batch, error: BaseException) -> None:
        del self._in_flight[batch.number]
        if self.error is None:
            self.error = error


def encode_plan(
    texts: Sequence[str],
    size: int,
    limit: int,
    request: Callable[[Sequence[str]], Any],
    progress: Callable[[int], object] | None = None,
) -> Plan:
    count = -(-len(texts) // size)
    return Plan(embed_batches(texts, size, request), limit, progress, len(texts), count)


def upsert_plan(
    collection: str,
    documents: list[pb.Document] | Iterator[pb.Document],
    size: int,
    limit: int,
    progress: Callable[[int], object] | None = None,
    priority: int = pb.PRIORITY_UNSPECIFIED,
) -> Plan:
    """`documents` from `documents_source`: a list is known whole, an iterator is not.
    priority: the UpsertRequests' (a pb.Priority value)."""
    if not isinstance(documents, list):
        read: list[str] = []  # every document taken from the iterator, sent or not
        recorded = _recording(documents, read)
        return Plan(upsert_batches(collection, recorded, size, priority), limit, progress, ids=read)
    batches = upsert_batches(collection, documents, size, priority)
    count = max(1, -(-len(documents) // size))
    ids = [doc.id for doc in documents]
    return Plan(batches, limit, progress, len(documents), count, ids)


def _recording(documents: Iterator[pb.Document], ids: list[str]) -> Iterator[pb.Document]:
    """`documents`, each one's id put in `ids` as it is read: those of a batch that a bad
    document stops before it is sent are known too."""
    for doc in documents:
        ids.append(doc.id)
        yield doc


def joined_vectors(plan: Plan) -> np.ndarray:
    """Every batch's vectors, in the texts' order; or the first failure."""
    if plan.error is not None:
        raise plan.error
    return np.concatenate([plan.results[batch.number] for batch in plan.read])


def upserted_ids(plan: Plan) -> list[str]:
    """One id per input document, in input order; or the first failure, saying which
    documents are stored (`stored_ids`) and every document's id (`document_ids`)."""
    read = [i for batch in plan.read for i in batch.ids]
    if plan.error is None:
        return read
    ids = read if plan.ids is None else plan.ids
    # An id is stored as sent only when the batch of its last write was: an earlier write
    # that landed under a later one that failed is not what the caller meant to store.
    last = {i: batch.number for batch in plan.read for i in batch.ids}
    stored = [
        i
        for batch in plan.read
        if batch.number in plan.results
        for i in batch.ids
        if last[i] == batch.number
    ]
    raise with_account(plan.error, stored, ids, plan.total)


def with_account(
    error: BaseException, stored: list[str], ids: list[str], total: int | None
) -> BaseException:
    """`error`, saying what the upsert it stopped had stored, so the caller need not guess."""
    of = f"{total} documents" if total is not None else f"the {len(ids)} documents read"
    note = (
        f"upsert stopped: {len(stored)} of {of} were stored (their ids: the error's "
        "stored_ids); send the others again: every document's id is in document_ids, so "
        "nothing is stored twice"
    )
    error.account = note  # type: ignore[attr-defined]
    if isinstance(error, EmbedSenseError):
        error.message += f" ({note})"
        error.args = (f"{error.args[0]} ({note})", *error.args[1:])
    else:
        error.add_note(note)
    error.stored_ids = stored  # type: ignore[attr-defined]
    error.document_ids = ids  # type: ignore[attr-defined]
    return error
