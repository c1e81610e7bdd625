"""What the sync and async clients share: channels, requests, parsing, retries.

Each API call is built once here, as "which RPC, which request, how to read the answer";
`Client` and `AsyncClient` differ only in how they make the call. The bulk path (batches,
document ids, what a partial failure stored) is client/bulk.py.
"""

from __future__ import annotations

import json
import numbers
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import inf
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from embedsense.client.bulk import id_text, to_document
from embedsense.client.messages import message
from embedsense.client.targets import Targets, grpc_target
from embedsense.client.types import (
    CollectionInfo,
    Disambiguation,
    Explanation,
    Focus,
    Hit,
    InducedSense,
    Induction,
    Info,
    Inventory,
    LayerComparison,
    Neuron,
    Occurrence,
    Occurrences,
    SearchQuery,
    SenseScore,
    StoredDocument,
    TokenEmbeddings,
    Tokens,
)
from embedsense.proto.tensors import from_tensor, to_tensor
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.values import metadata_problem, threshold_problem

T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ROLES = {None: pb.ROLE_UNSPECIFIED, "query": pb.ROLE_QUERY, "passage": pb.ROLE_PASSAGE}
LONG_TEXT = {"error": pb.LONG_TEXT_ERROR, "truncate": pb.LONG_TEXT_TRUNCATE,
             "windows": pb.LONG_TEXT_WINDOWS}  # fmt: skip
POOLING = {None: pb.POOLING_DEFAULT, "mean": pb.POOLING_MEAN, "cls": pb.POOLING_CLS}
PRIORITIES = {
    None: pb.PRIORITY_UNSPECIFIED,
    "query": pb.PRIORITY_QUERY,
    "interactive": pb.PRIORITY_INTERACTIVE,
    "bulk": pb.PRIORITY_BULK,
}


@dataclass(frozen=True)
class Retry:
    """Bounded retries with exponential backoff and jitter, on UNAVAILABLE and the server's
    "overloaded" RESOURCE_EXHAUSTED only (see errors.retryable)."""

    attempts: int = 4  # in all, the first included
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry(attempts={self.attempts!r}): an int, at least 1")
        if self.attempts < 1:  # every call would fail before it was sent
            raise ValueError(
                f"Retry(attempts={self.attempts}): at least 1, the call itself (1: no retries)"
            )
        for name in ("initial_backoff", "max_backoff"):  # a sleep of them: sync and async alike
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not 0 <= value < inf:
                raise ValueError(f"Retry({name}={value!r}): seconds, a finite number >= 0")

    def attempts_for(self, call: Call[Any]) -> int:
        return 1 if call.sent_once else self.attempts

    def delay(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.max_backoff, self.initial_backoff * 2**attempt)


class Deadline:
    """A call's timeout as one deadline for all its attempts (None: none)."""

    def __init__(self, timeout: float | None) -> None:
        self._at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        """The seconds left for the next attempt (at least a millisecond: gRPC then answers
        DEADLINE_EXCEEDED itself)."""
        return None if self._at is None else max(0.001, self._at - time.monotonic())

    def allows(self, delay: float) -> bool:
        """Whether a retry after `delay` seconds would still have time to run."""
        return self._at is None or time.monotonic() + delay < self._at


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC with one answer: its name, its request, and how to read the answer. `stream`:
    a client-streaming RPC (Upsert), sent as a stream of this one request."""

    rpc: str
    request: Any
    parse: Callable[[Any], T]
    stream: bool = False

    @property
    def sent_once(self) -> bool:
        """Whether a try that failed is never repeated (SENT_ONCE); a create that accepts an
        existing collection (exist_ok) is safe to repeat."""
        return self.rpc in SENT_ONCE and not getattr(self.request, "exist_ok", False)

    def message(self) -> Any:
        """What the stub takes: the request, or a new stream of it (each try needs its own)."""
        return iter([self.request]) if self.stream else self.request


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


PemSource = bytes | str | Path | None


@dataclass(frozen=True)
class TLS:
    """TLS for the channel. root_certificates: the CA that signed the server's certificate
    (None: the system's roots); client certificate and key: for mutual TLS. PEM bytes, or
    paths to PEM files."""

    root_certificates: PemSource = None
    client_certificate: PemSource = None
    client_key: PemSource = None

    def credentials(self) -> grpc.ChannelCredentials:
        loaded = loaded_tls(self)
        return grpc.ssl_channel_credentials(
            loaded.root_certificates, loaded.client_key, loaded.client_certificate
        )


def loaded_tls(tls: TLS | bool | None) -> TLS | bool | None:
    """`tls` with its PEM files read now: a missing one is an error where the client is
    made, not at its first call (an AsyncClient opens its channel then)."""
    if not isinstance(tls, TLS):
        return tls
    return TLS(
        root_certificates=_pem(tls.root_certificates, "root_certificates", PEM_CERTIFICATE),
        client_certificate=_pem(tls.client_certificate, "client_certificate", PEM_CERTIFICATE),
        client_key=_pem(tls.client_key, "client_key", PEM_KEY),
    )


# What a PEM file of each kind holds: anything else (a key given as the CA, a DER file) is
# refused here, by name, rather than by gRPC at the handshake as UNAVAILABLE.
# (OpenSSL's TRUSTED and X509 CERTIFICATE blocks are certificates too.)
PEM_CERTIFICATE = ("certificate", b"CERTIFICATE-----")
PEM_KEY = ("private key", b" PRIVATE KEY-----")


def _pem(source: PemSource, field: str, kind: tuple[str, bytes]) -> bytes | None:
    if source is None:
        return None
    pem = source if isinstance(source, bytes) else Path(source).read_bytes()
    name, marker = kind
    if marker not in pem:
        where = field if isinstance(source, bytes) else f"{field} {source}"
        raise ValueError(f"{where}: not a PEM {name} (no '-----BEGIN ...{marker.decode()}' line)")
    return pem


# Calls sent once, retried neither by gRPC's policy nor by the SDK's: an UNAVAILABLE may
# come after the work was done (an index backend that timed out then), and the call sent
# again would answer ALREADY_EXISTS or NOT_FOUND for one that worked.
SENT_ONCE = ("CreateCollection", "DropCollection", "CreateInventory", "DeleteInventory")
SERVICE = "embedsense.v1.EmbedSense"
# gRPC's own client-side balancing: every call picks the next ready server (round_robin),
# and a call that finds one unreachable is retried by gRPC on another. A server that dies
# drops out of the rotation until it answers again.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }, {
        "name": [{"service": SERVICE, "method": method} for method in SENT_ONCE],  # no retries
    }],
})  # fmt: skip


def open_channel(targets: Targets, tls: TLS | bool | None, aio: bool) -> grpc.Channel:
    module = grpc.aio if aio else grpc
    target = grpc_target(targets)
    options = [*channel_options(), ("grpc.service_config", SERVICE_CONFIG)]
    if not tls:
        return module.insecure_channel(target, options=options)
    settings = tls if isinstance(tls, TLS) else TLS()
    return module.secure_channel(target, settings.credentials(), options=options)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `api_key`. A key gRPC would refuse to send (a newline, as
    a secret file ends with; other control characters) is a ValueError here, not every
    call's INTERNAL "Invalid metadata"."""
    if not api_key:
        return ()
    if not api_key.isascii() or not api_key.isprintable():
        raise ValueError(
            f"api_key: {len(api_key)} characters, not all printable ASCII (a trailing newline?)"
        )
    return (("authorization", f"Bearer {api_key}"),)


def role(name: str | None) -> int:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"role {name!r}: expected 'query', 'passage' or None") from None


def priority(name: str | None) -> int:
    """How soon the server embeds a call's texts when it is busy: "query" (a lookup a person
    waits on), "interactive", "bulk" (a large job: refused first when the server is full),
    or None for the server's default (README: Priority). Any case, as X-Priority over HTTP."""
    try:
        return PRIORITIES[name.strip().lower() if isinstance(name, str) else name]
    except (KeyError, TypeError):
        raise ValueError(
            f"priority={name!r}: expected 'query', 'interactive', 'bulk' or None"
        ) from None


def long_text_mode(name: str) -> int:
    """What to do with a text longer than the model takes: "error" (refuse it, naming its
    length), "truncate" (its first window), "windows" (overlapping windows, stitched)."""
    try:
        return LONG_TEXT[name]
    except (KeyError, TypeError):
        raise ValueError(f"long_text={name!r}: expected 'error', 'truncate' or 'windows'") from None


def check_embed_options(role_name: str | None, long_text: str, priority_name: str | None) -> None:
    """An encode's names checked before any request (a ValueError naming the wrong one): the
    batches are built later, after a round trip that a server down would fail first."""
    role(role_name)
    long_text_mode(long_text)
    priority(priority_name)


def truncate_flag(name: str, method: str) -> bool:
    """`long_text` as the `truncate` field of Explain and CompareLayers: attention maps and
    layer cosines are of one window, so "windows" has no meaning there."""
    if name not in ("error", "truncate"):  # not long_text_mode's words: they offer windows
        raise ValueError(
            f"long_text={name!r}: {method} takes 'error' or 'truncate' (it looks at one "
            "window of the text: 'truncate' gives the first)"
        )
    return name == "truncate"


# ------------------------------------------------------------------ parsing


def parse_info(r: pb.InfoResponse) -> Info:
    return Info(
        r.version, r.model, r.dim, r.device, r.dtype, r.max_tokens, r.num_layers,
        r.max_batch_tokens, r.max_queued_tokens, r.max_concurrent_requests,
        r.max_texts_per_request, r.max_message_bytes, r.auth_required, r.index_backend,
        r.replica, r.dtype_reason, r.max_text_chars,
    )  # fmt: skip


def parse_tokens(r: pb.TokenizeResponse) -> Tokens:
    return Tokens(list(r.tokens), list(r.ids), list(zip(r.starts, r.ends, strict=True)),
                  list(r.from_text))  # fmt: skip


def parse_collection(r: pb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        r.name, r.model, r.dim, r.metric, r.index, r.store_tokens, r.count, r.created_at,
        r.trained, r.training_size, r.ef_search, r.nprobe, r.tokens, r.bytes_per_token,
    )  # fmt: skip


def parse_sentences(r: pb.EmbedResponse) -> np.ndarray:
    return from_tensor(r.sentence_vectors)


def parse_token_vectors(r: pb.EmbedResponse) -> list[TokenEmbeddings]:
    return [
        TokenEmbeddings(
            parse_tokens(t.tokens), from_tensor(t.vectors), t.windows, t.truncated_tokens
        )  # fmt: skip
        for t in r.token_vectors
    ]


def parse_hit_list(hits: Sequence[pb.Hit]) -> list[Hit]:
    return [
        Hit(h.id, h.score, h.text, json.loads(h.metadata_json or "{}"),
            from_tensor(h.vector) if h.HasField("vector") else None)
        for h in hits
    ]  # fmt: skip


def parse_hits(r: pb.SearchResponse) -> list[Hit]:
    return parse_hit_list(r.hits)


def parse_documents(ids: Sequence[str]) -> Callable[[pb.GetResponse], list[StoredDocument | None]]:
    def parse(r: pb.GetResponse) -> list[StoredDocument | None]:
        found = {
            d.id: StoredDocument(d.id, d.text, json.loads(d.metadata_json or "{}"),
                                 from_tensor(d.vector) if d.HasField("vector") else None)
            for d in r.documents
        }  # fmt: skip
        return [found.get(i) for i in ids]

    return parse


def parse_disambiguation(r: pb.DisambiguateResponse) -> Disambiguation:
    return Disambiguation(
        label=r.label,
        scores=[SenseScore(s.label, s.probability, s.similarity) for s in r.scores],
        nearest=[(e.label, e.text, e.similarity) for e in r.nearest],
        span=(r.span.start, r.span.end), layers=list(r.layers), centred=r.centred,
        temperature=r.temperature, with_sentence=r.with_sentence,
    )  # fmt: skip


def parse_occurrence(o: pb.Occurrence) -> Occurrence:
    return Occurrence(o.id, o.text, (o.span.start, o.span.end), o.score,
                      json.loads(o.metadata_json or "{}"))  # fmt: skip


def parse_induction(r: pb.InduceSensesResponse) -> Induction:
    return Induction(
        [InducedSense(s.size, [parse_occurrence(o) for o in s.central]) for s in r.senses],
        r.occurrences, r.silhouette,
    )  # fmt: skip


def parse_inventory(r: pb.InventoryInfo) -> Inventory:
    return Inventory(r.name, {word: {label: list(s.examples) for label, s in ws.senses.items()}
                              for word, ws in r.words.items()}, r.builtin)  # fmt: skip


def parse_explanation(r: pb.ExplainResponse) -> Explanation:
    return Explanation(
        tokens=parse_tokens(r.tokens), layers=list(r.layers), heads=list(r.heads),
        attentions=from_tensor(r.attentions),
        span=(r.span.start, r.span.end) if r.HasField("span") else None,
        target_tokens=list(r.target_tokens),
        focus=[Focus(f.layer, None if f.head < 0 else f.head,
                     [(t.token, t.weight) for t in f.tokens]) for f in r.focus],
        max_attention_values=r.max_attention_values,
        neuron=parse_neuron(r.neuron) if r.HasField("neuron") else None,
        truncated_tokens=r.truncated_tokens,
    )  # fmt: skip


def parse_neuron(r: pb.Neuron) -> Neuron:
    return Neuron(r.layer, r.head, list(r.query_tokens), from_tensor(r.queries),
                  from_tensor(r.keys))  # fmt: skip


def parse_comparison(r: pb.CompareLayersResponse) -> LayerComparison:
    return LayerComparison(list(r.cosines), (r.span_a.start, r.span_a.end),
                           (r.span_b.start, r.span_b.end))  # fmt: skip


def senses_message(
    senses: Mapping[str, Sequence[str]], where: str = "senses"
) -> dict[str, pb.SenseExamples]:
    """Each sense's example texts; TypeError naming the part of another shape (one str of
    examples would be sent as its characters, one example each)."""
    if not isinstance(senses, Mapping):
        raise TypeError(f"{where}: a dict of sense -> example texts, not {type(senses).__name__}")
    by_label = {}
    for label, examples in senses.items():
        str_key(label, where, "label")
        if not isinstance(examples, list | tuple):
            raise TypeError(
                f"{where}[{label!r}]: a list of example texts, not {type(examples).__name__}"
            )
        for i, example in enumerate(examples):
            if not isinstance(example, str):
                raise TypeError(f"{where}[{label!r}][{i}]: an example text (a str), not "
                                f"{type(example).__name__}")  # fmt: skip
        by_label[label] = pb.SenseExamples(examples=list(examples))
    return by_label


def str_key(key: Any, where: str, what: str) -> None:
    """TypeError naming a label or word that is not a str (protobuf's own dumps the
    request)."""
    if not isinstance(key, str):
        kind = type(key).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise TypeError(f"{where}: the {what} {key!r} is {article} {kind}; a {what} is a str")


# ------------------------------------------------------------------ the calls
# Each API method once, as "which RPC, which request, how to read the answer"; `Client` and
# `AsyncClient` make the call, with the same signatures (their docstrings are there).


def info_call() -> Call[Info]:
    return Call("Info", pb.InfoRequest(), parse_info)


def tokenize_call(text: str, role_name: str | None) -> Call[Tokens]:
    return Call("Tokenize", pb.TokenizeRequest(text=text, role=role(role_name)), parse_tokens)


def embed_tokens_call(
    texts: Sequence[str],
    layers: Sequence[int] | None,
    role_name: str | None,
    long_text: str,
    priority_name: str | None = None,
) -> Call[list[TokenEmbeddings]]:
    request = message(
        pb.EmbedRequest,
        texts=list(texts),
        role=role(role_name),
        token_vectors=True,
        layers=list(layers or ()),
        long_text=long_text_mode(long_text),
        priority=priority(priority_name),
    )
    return Call("Embed", request, parse_token_vectors)


def create_collection_call(
    name: str, index: str, store_tokens: bool, metric: str, ef_search: int, nprobe: int,
    dim: int = 0, exist_ok: bool = False,
) -> Call[CollectionInfo]:  # fmt: skip
    request = message(pb.CreateCollectionRequest,
        name=name, index=index, metric=metric, store_tokens=store_tokens,
        ef_search=ef_search, nprobe=nprobe, dim=dim, exist_ok=exist_ok,
    )  # fmt: skip
    return Call("CreateCollection", request, parse_collection)


def list_collections_call() -> Call[list[CollectionInfo]]:
    return Call("ListCollections", pb.ListCollectionsRequest(),
                lambda r: [parse_collection(c) for c in r.collections])  # fmt: skip


def describe_collection_call(name: str) -> Call[CollectionInfo]:
    return Call("DescribeCollection", message(pb.CollectionRef, name=name), parse_collection)


def drop_collection_call(name: str) -> Call[None]:
    return Call("DropCollection", message(pb.CollectionRef, name=name), lambda r: None)


def filter_json(where: Mapping[str, Any] | None) -> str:
    """A filter as the wire's filter_json ("" for none); a TypeError for one that is not a
    dict (a list or a string would be the server's refusal, naming the wire's field, or
    search's no filter at all); the server checks what is in it."""
    if where is None:
        return ""
    if not isinstance(where, Mapping):
        raise TypeError(
            f"filter: a dict (a JSON object such as {{'lang': 'zh'}}), got {type(where).__name__}"
        )
    return json_text(where, "filter")


def json_text(value: Mapping[str, Any], name: str) -> str:
    """`value` as JSON text for a *_json field, checked as upsert checks metadata: a
    ValueError naming the argument and the place in it of what no surface could send back
    (a numpy scalar, a key that is not a str, a string no UTF-8 holds, nesting past 32
    levels), where json raised a bare TypeError or RecursionError, or wrote an int key as its
    digits, and protobuf named the wire's field."""
    if (wrong := metadata_problem(value, name)) is not None:
        raise ValueError(wrong)
    return json.dumps(value, ensure_ascii=False)


def count_call(name: str, where: Mapping[str, Any] | None = None) -> Call[int]:
    request = message(pb.CountRequest, collection=name, filter_json=filter_json(where))
    return Call("Count", request, lambda r: r.count)


def upsert_call(request: pb.UpsertRequest) -> Call[list[str]]:
    """One batch of a bulk upsert (client/bulk.py makes the batches)."""
    return Call("Upsert", request, lambda r: list(r.ids), stream=True)


def id_list(ids: Iterable[str | int], unique: bool = False) -> list[str]:
    """Document ids as sent: each a str, or an int as its digits (as upsert stores {"id": 7});
    one str would be sent as its characters, one id each, and is refused. `unique`: each id
    once, in order (a delete or update sent in several requests counts an id once)."""
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        kind = "one str" if isinstance(ids, str) else type(ids).__name__
        raise TypeError(f"ids: a list of ids, not {kind}")
    listed = [id_text(doc_id, f"ids[{i}]") for i, doc_id in enumerate(ids)]
    return list(dict.fromkeys(listed)) if unique else listed


def get_call(
    name: str, ids: Sequence[str | int], with_vectors: bool
) -> Call[list[StoredDocument | None]]:
    ids = id_list(ids)
    request = message(pb.GetRequest, collection=name, ids=ids, with_vectors=with_vectors)
    return Call("Get", request, parse_documents(ids))


def delete_call(
    name: str, ids: Sequence[str | int] | None, where: Mapping[str, Any] | None = None
) -> Call[int]:
    """By ids, or every document matching `where`: one of them (an empty filter is the
    server's to refuse: drop the collection to delete everything)."""
    if (ids is None) == (where is None):
        raise ValueError("delete: give ids or filter (one of them)")
    listed = id_list(() if ids is None else ids)  # an iterator is read once, here
    if where is None and not listed:  # deletes nothing, as HTTP's {"ids": []}: if it exists
        return Call("DescribeCollection", message(pb.CollectionRef, name=name), lambda r: 0)
    request = message(pb.DeleteRequest,
        collection=name, ids=listed, filter_json=filter_json(where),
    )  # fmt: skip
    return Call("Delete", request, lambda r: r.deleted)


def parse_stored(d: pb.StoredDocument) -> StoredDocument:
    vector = from_tensor(d.vector) if d.HasField("vector") else None
    return StoredDocument(d.id, d.text, json.loads(d.metadata_json or "{}"), vector)


def scroll_call(
    name: str, where: Mapping[str, Any] | None, limit: int, cursor: str, with_vectors: bool
) -> Call[tuple[list[StoredDocument], str]]:
    """One page: its documents and the next page's cursor ("" after the last page). The
    clients' `scroll` follows the cursor until it is empty."""
    request = message(pb.ScrollRequest,
        collection=name, filter_json=filter_json(where), limit=limit, cursor=cursor,
        with_vectors=with_vectors,
    )  # fmt: skip
    return Call(
        "Scroll", request, lambda r: ([parse_stored(d) for d in r.documents], r.next_cursor)
    )


METADATA_MODES = {"merge": pb.METADATA_MERGE, "replace": pb.METADATA_REPLACE}


def metadata_update(patch: Mapping[str, Any], mode: str) -> tuple[str, int]:
    """A metadata update's patch as JSON and its mode on the wire, checked: the clients
    check them before a long list of ids is split (which asks the server its limit)."""
    if mode not in METADATA_MODES:
        raise ValueError(f"mode={mode!r}: expected 'merge' or 'replace'")
    if not isinstance(patch, Mapping):
        raise TypeError(f"patch: a dict, got {type(patch).__name__}")
    return json_text(patch, "patch"), METADATA_MODES[mode]


def update_metadata_call(
    name: str, ids: Sequence[str | int], patch: Mapping[str, Any], mode: str
) -> Call[int]:
    ids = id_list(ids)
    patch_json, wire_mode = metadata_update(patch, mode)
    request = message(pb.UpdateMetadataRequest,
        collection=name, ids=ids, patch_json=patch_json, mode=wire_mode,
    )  # fmt: skip
    return Call("UpdateMetadata", request, lambda r: r.updated)


def with_vectors_documents(documents: Iterable[Any], vectors: np.ndarray | None) -> Iterable[Any]:
    """Documents with the caller's own vectors, as messages: `vectors` (n, dim) beside a
    list of n documents, or a dict document's "vector". Such a document's text may be empty
    (then it needs an "id": the id made from a text and metadata would be the same for all
    of them). Documents without a vector are passed on as they are (the server embeds them).
    One str or one dict is passed on as it is, for documents_source to refuse."""
    if vectors is not None:
        if not isinstance(documents, Sequence) or isinstance(documents, str):
            raise TypeError("vectors=: documents must be a list, one per vector row")
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) != len(documents):
            raise ValueError(
                f"vectors: shape {matrix.shape}; expected ({len(documents)}, dim), a row per "
                "document"
            )
        rows: Iterable[np.ndarray | None] = matrix
    elif isinstance(documents, str | bytes | Mapping):
        return documents
    elif isinstance(documents, Sequence):
        rows = [None] * len(documents)
    else:
        return (_with_vector(doc, None) for doc in documents)
    built = [_with_vector(doc, row) for doc, row in zip(documents, rows, strict=True)]
    _one_vector_per_made_id(documents, built)
    return built


def _one_vector_per_made_id(documents: Sequence[Any], built: Sequence[Any]) -> None:
    """ValueError for two documents with vectors of their own and the id made from the same
    text and metadata: the second would replace the first, one vector lost without a word
    (the server refuses them so; identical texts without vectors are one document)."""
    made: dict[str, int] = {}
    for i, (doc, out) in enumerate(zip(documents, built, strict=True)):
        # A str has none; a message (pb.Document) was given its id by whoever built it.
        own_id = (
            doc.get("id") not in (None, "")
            if isinstance(doc, Mapping)
            else not isinstance(doc, str)
        )
        if own_id or not isinstance(out, pb.Document) or not out.HasField("vector"):
            continue
        if (first := made.setdefault(out.id, i)) != i:
            raise ValueError(
                f"documents[{first}] and documents[{i}] have vectors of their own and the same "
                "text and metadata and no id, so the same id: give each an id"
            )


def _with_vector(doc: Any, row: np.ndarray | None) -> Any:
    if isinstance(doc, Mapping) and "vector" in doc:
        own = doc["vector"]
        doc = {key: value for key, value in doc.items() if key != "vector"}
        if own is not None:  # None: no vector of its own, as when the key is left out
            if row is not None:
                raise ValueError("a document has a 'vector' and vectors= gives it another")
            row = _own_vector(own)
    if row is None:
        return doc
    if isinstance(doc, str):
        doc = {"text": doc}
    if not isinstance(doc, Mapping):
        raise ValueError(f"a document is a str or a dict, got {doc!r:.80}")
    doc = {"text": "", **doc}
    if doc.get("id") in (None, "") and not doc["text"]:
        raise ValueError("a document given by its vector alone (no text) needs an 'id'")
    message = to_document(doc, embedded=False)
    message.vector.CopyFrom(to_tensor(row))
    return message


def _own_vector(value: Any) -> np.ndarray:
    """A document's "vector" as float32 (dim,): TypeError or ValueError naming the field
    for anything else (numpy would read a str as "could not convert", a number as (1,))."""
    problem = f"a document's 'vector' is a list or array of numbers (dim,), got {value!r:.60}"
    try:
        row = np.asarray(value)
    except ValueError:  # rows of different lengths
        raise TypeError(problem) from None
    if row.dtype.kind not in "iuf":  # a str, None, a bool: numpy would read or cast them
        raise TypeError(problem)
    row = row.astype(np.float32)
    if row.ndim != 1:
        raise ValueError(f"{problem}, of shape {row.shape}")
    return row


def search_call(
    name: str, query: SearchQuery, k: int,
    where: Mapping[str, Any] | None, ef_search: int, nprobe: int,
    priority_name: str | None = None, score_threshold: float | None = None,
    with_vectors: bool = False,
) -> Call[Any]:  # fmt: skip
    """One query (a str, or a vector (dim,)): Search, a hit list. Several (a list of str, or
    vectors (n, dim)): SearchBatch, a hit list per query in order."""
    check_k(k)
    if isinstance(score_threshold, int | float) and not isinstance(score_threshold, bool):
        # protobuf would send one past float32's range as infinity: refused as the server would
        if (wrong := threshold_problem(score_threshold)) is not None:
            raise ValueError(f"score_threshold: {wrong}")
    options = dict(
        collection=name, k=k, filter_json=filter_json(where),
        ef_search=ef_search, nprobe=nprobe, priority=priority(priority_name),
        score_threshold=score_threshold, with_vectors=with_vectors,
    )  # fmt: skip
    if isinstance(query, np.ndarray) and query.dtype.kind in "UO":  # texts, not vectors
        query = query.tolist()
    query = _vectors_as_array(query)
    if isinstance(query, str):
        return Call("Search", message(pb.SearchRequest, text=query, **options), parse_hits)
    if isinstance(query, np.ndarray) and query.ndim == 1:
        vector = to_tensor(np.asarray(query, dtype=np.float32))
        return Call("Search", message(pb.SearchRequest, vector=vector, **options), parse_hits)
    batch = message(pb.SearchBatchRequest, **options)
    if isinstance(query, np.ndarray):
        batch.vectors.CopyFrom(to_tensor(query))
    else:
        texts = list(query)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"query[{i}] is a {type(text).__name__}; queries are str")
        batch.texts.extend(texts)
    return Call("SearchBatch", batch, lambda r: [parse_hit_list(h.hits) for h in r.results])


def _numbers(values: Any) -> bool:
    """Whether `values` is a non-empty list (or tuple) of numbers: a vector as JSON has it."""
    return (
        isinstance(values, list | tuple)
        and len(values) > 0
        and all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values)
    )


def _vectors_as_array(query: Any) -> Any:
    """A query given as a list of numbers (one vector) or a list of such lists (several), as
    an array; any other query as it is."""
    if not (_numbers(query) or (isinstance(query, list | tuple) and query
                                and all(_numbers(row) for row in query))):  # fmt: skip
        return query
    try:
        return np.asarray(query, dtype=np.float32)
    except ValueError:  # rows of different lengths
        raise ValueError("query: vectors of different lengths; each must have the same length "
                         "(the collection's dimension)") from None  # fmt: skip


def _with_span(request: Any, span: tuple[int, int] | None, side: str = "") -> Any:
    """`request` with its span set (side "_a" or "_b": CompareLayers' span_a, span_b)."""
    if span is not None:
        occurrence = getattr(request, "occurrence" + side)
        if occurrence:  # the server refuses the pair as well
            raise ValueError(
                f"span{side} and occurrence{side} ({span}, {occurrence}): each names the "
                "occurrence; give one"
            )
        getattr(request, "span" + side).CopyFrom(message(pb.Span, start=span[0], end=span[1]))
    return request


def disambiguate_call(
    text: str, word: str, senses: Mapping[str, Sequence[str]] | None, occurrence: int,
    span: tuple[int, int] | None, inventory: str | None, layers: Sequence[int] | None,
    centre: bool, with_sentence: bool, priority_name: str | None = None,
) -> Call[Disambiguation]:  # fmt: skip
    if senses is not None and not senses:  # on the wire, no senses: the inventory's
        raise ValueError("senses: empty; give two senses or more, or leave senses out (None) "
                         "for the inventory's")  # fmt: skip
    request = message(pb.DisambiguateRequest,
        text=text, word=word, occurrence=occurrence, senses=senses_message(senses or {}),
        inventory=inventory or "", layers=list(layers or ()), no_centring=not centre,
        word_only=not with_sentence, priority=priority(priority_name),
    )  # fmt: skip
    return Call("Disambiguate", _with_span(request, span), parse_disambiguation)


def create_inventory_call(
    name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool
) -> Call[Inventory]:
    if not isinstance(words, Mapping):
        raise TypeError(f"words: a dict of word -> sense -> examples, not {type(words).__name__}")
    by_word = {}
    for word, senses in words.items():
        str_key(word, "words", "word")
        by_word[word] = pb.WordSenses(senses=senses_message(senses, f"words[{word!r}]"))
    request = pb.CreateInventoryRequest(name=name, replace=replace, words=by_word)
    return Call("CreateInventory", request, parse_inventory)


def list_inventories_call() -> Call[list[Inventory]]:
    return Call("ListInventories", pb.ListInventoriesRequest(),
                lambda r: [parse_inventory(i) for i in r.inventories])  # fmt: skip


def get_inventory_call(name: str) -> Call[Inventory]:
    return Call("GetInventory", pb.InventoryRef(name=name), parse_inventory)


def delete_inventory_call(name: str) -> Call[None]:
    return Call("DeleteInventory", pb.InventoryRef(name=name), lambda r: None)


def check_k(k: Any) -> None:
    """A ValueError for a k below 1, as the server's: the range of its wire field (from 0)
    was said for -1, and then 0 was refused."""
    if isinstance(k, numbers.Integral) and not isinstance(k, bool) and k < 1:  # numpy's too
        raise ValueError(f"k: the most answers to return, at least 1; got {k}")


def search_occurrences_call(
    collection: str, text: str, word: str, k: int, occurrence: int,
    span: tuple[int, int] | None, priority_name: str | None = None,
) -> Call[Occurrences]:  # fmt: skip
    check_k(k)
    request = message(
        pb.SearchOccurrencesRequest,
        collection=collection,
        text=text,
        word=word,
        occurrence=occurrence,
        k=k,
        priority=priority(priority_name),
    )
    return Call(
        "SearchOccurrences",
        _with_span(request, span),
        lambda r: Occurrences(map(parse_occurrence, r.occurrences), r.compared),
    )


# The server's bound on the senses the silhouette chooses among when a caller gives no max_k
# (said in the CLI's --max-k help).
DEFAULT_MAX_K = 6


def induce_senses_call(
    collection: str, word: str, k: int | None, max_k: int | None, central: int
) -> Call[Induction]:
    if k is not None and max_k is not None:  # one names the number, the other bounds it
        raise ValueError(
            f"k={k} and max_k={max_k}: k names the senses' number, max_k bounds the "
            "silhouette's choice of it; give one"
        )
    if central < 1:  # 0 on the wire is "not given", which the server reads as 3
        raise ValueError(f"central: the occurrences shown per sense, at least 1; got {central}")
    if k is not None and k < 1:  # 0 on the wire is "not given": the silhouette's choice
        raise ValueError(f"k: the senses to find, at least 1 (or None to choose); got {k}")
    if max_k is not None and max_k < 1:  # 0 on the wire is "not given": the server's 6
        raise ValueError(f"max_k: the most senses to choose among, at least 1; got {max_k}")
    request = message(pb.InduceSensesRequest, collection=collection, word=word, k=k or 0,
                      max_k=max_k or 0, central=central)  # fmt: skip
    return Call("InduceSenses", request, parse_induction)


def explain_call(
    text: str, word: str | None, layers: Sequence[int] | None, heads: Sequence[int] | None,
    occurrence: int, span: tuple[int, int] | None, long_text: str,
    neuron: tuple[int, int] | None = None, role_name: str | None = None,
) -> Call[Explanation]:  # fmt: skip
    request = message(pb.ExplainRequest, text=text, word=word or "", occurrence=occurrence,
                                layers=list(layers or ()), heads=list(heads or ()),
                                truncate=truncate_flag(long_text, "explain"),
                                role=role(role_name))  # fmt: skip
    if neuron is not None:
        layer, head = neuron
        request.neuron.CopyFrom(message(pb.NeuronRequest, layer=layer, head=head))
    return Call("Explain", _with_span(request, span), parse_explanation)


def compare_layers_call(
    text_a: str, text_b: str, word: str, occurrence_a: int, occurrence_b: int, long_text: str,
    role_name: str | None = None, span_a: tuple[int, int] | None = None,
    span_b: tuple[int, int] | None = None,
) -> Call[LayerComparison]:  # fmt: skip
    if not word and (span_a is None or span_b is None):  # the server refuses it as well
        raise ValueError("word: empty; name the word to compare in both texts, or give both "
                         "spans (span_a and span_b)")  # fmt: skip
    request = message(pb.CompareLayersRequest,
        text_a=text_a, text_b=text_b, word=word, occurrence_a=occurrence_a,
        occurrence_b=occurrence_b, truncate=truncate_flag(long_text, "compare_layers"),
        role=role(role_name),
    )  # fmt: skip
    request = _with_span(_with_span(request, span_a, "_a"), span_b, "_b")
    return Call("CompareLayers", request, parse_comparison)


def as_texts(texts: str | Sequence[str]) -> tuple[list[str], bool]:
    """sentence-transformers' contract: a str is one text (the answer is not a list), any
    other sequence is a list of texts."""
    if isinstance(texts, str):
        return [texts], True
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}; texts are str")
    return texts, False


def embed_request(
    texts: Sequence[str],
    normalize: bool,
    role_name: str | None,
    long_text: str,
    priority_name: str | None = None,
) -> pb.EmbedRequest:
    return message(
        pb.EmbedRequest,
        texts=list(texts),
        role=role(role_name),
        sentence_vectors=True,
        no_normalize=not normalize,
        long_text=long_text_mode(long_text),
        priority=priority(priority_name),
    )
