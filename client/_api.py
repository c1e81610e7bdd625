"""What the sync and async clients share: requests, parsing, retries' timing, documents.

Each API method is written once here, as "which RPC, which request, how to read the
answer"; `Client` and `AsyncClient` differ only in how they make the call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from embedsense.client.tensors import from_tensor, to_tensor
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
    Occurrence,
    SenseScore,
    StoredDocument,
    TokenEmbeddings,
    Tokens,
)
from embedsense.client.v1 import embedsense_pb2 as pb

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ROLES = {None: pb.ROLE_UNSPECIFIED, "query": pb.ROLE_QUERY, "passage": pb.ROLE_PASSAGE}
LONG_TEXT = {"error": pb.LONG_TEXT_ERROR, "truncate": pb.LONG_TEXT_TRUNCATE,
             "windows": pb.LONG_TEXT_WINDOWS}  # fmt: skip
POOLING = {None: pb.POOLING_DEFAULT, "mean": pb.POOLING_MEAN, "cls": pb.POOLING_CLS}


@dataclass(frozen=True)
class Retry:
    """Bounded retries with exponential backoff and jitter, on UNAVAILABLE and
    RESOURCE_EXHAUSTED only (the two that mean "not now", never "not this")."""

    attempts: int = 4  # in all, the first included
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.max_backoff, self.initial_backoff * 2**attempt)


@dataclass(frozen=True)
class Call:
    """One unary RPC: its name, its request, and how to read its answer."""

    rpc: str
    request: Any
    parse: Callable[[Any], Any]


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
        return grpc.ssl_channel_credentials(
            _pem(self.root_certificates), _pem(self.client_key), _pem(self.client_certificate)
        )


def _pem(source: PemSource) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def open_channel(target: str, tls: TLS | bool | None, aio: bool) -> grpc.Channel:
    module = grpc.aio if aio else grpc
    if not tls:
        return module.insecure_channel(target, options=channel_options())
    settings = tls if isinstance(tls, TLS) else TLS()
    return module.secure_channel(target, settings.credentials(), options=channel_options())


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def role(name: str | None) -> int:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"role {name!r}: expected 'query', 'passage' or None") from None


# ------------------------------------------------------------------ parsing


def parse_info(r: pb.InfoResponse) -> Info:
    return Info(
        r.version, r.model, r.dim, r.device, r.dtype, r.max_tokens, r.num_layers,
        r.max_batch_tokens, r.max_queued_tokens, r.max_concurrent_requests,
        r.max_texts_per_request, r.max_message_bytes, r.auth_required,
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


def parse_hits(r: pb.SearchResponse) -> list[Hit]:
    return [Hit(h.id, h.score, h.text, json.loads(h.metadata_json or "{}")) for h in r.hits]


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
    )  # fmt: skip


def parse_comparison(r: pb.CompareLayersResponse) -> LayerComparison:
    return LayerComparison(list(r.cosines), (r.span_a.start, r.span_a.end),
                           (r.span_b.start, r.span_b.end))  # fmt: skip


def senses_message(senses: Mapping[str, Sequence[str]]) -> dict[str, pb.SenseExamples]:
    return {label: pb.SenseExamples(examples=list(examples)) for label, examples in senses.items()}


# ------------------------------------------------------------------ documents


def to_document(doc: str | Mapping[str, Any]) -> pb.Document:
    """A str is a text; a mapping has "text" and optionally "id" and "metadata"."""
    if isinstance(doc, str):
        return pb.Document(text=doc)
    if not isinstance(doc, Mapping) or "text" not in doc:
        raise ValueError(f"a document is a str or a dict with 'text', got {doc!r:.80}")
    unknown = set(doc) - {"id", "text", "metadata"}
    if unknown:
        raise ValueError(f"unknown document fields {sorted(unknown)}: expected id, text, metadata")
    return pb.Document(
        id=str(doc.get("id") or ""),
        text=doc["text"],
        metadata_json=json.dumps(doc.get("metadata") or {}, ensure_ascii=False),
    )


def upsert_requests(
    collection: str, documents: Iterable[str | Mapping[str, Any]], batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[pb.UpsertRequest]:  # fmt: skip
    batch: list[pb.Document] = []
    for doc in documents:
        batch.append(to_document(doc))
        if len(batch) == batch_size:
            yield pb.UpsertRequest(collection=collection, documents=batch)
            if on_batch:
                on_batch(len(batch))
            batch = []
    if batch:
        yield pb.UpsertRequest(collection=collection, documents=batch)
        if on_batch:
            on_batch(len(batch))


# ------------------------------------------------------------------ the methods


class Methods:
    """The single-call API methods. `_call` makes the call: it returns the parsed answer
    in `Client`, and a coroutine of it in `AsyncClient`."""

    def _call(self, call: Call) -> Any:
        raise NotImplementedError

    def info(self) -> Info:
        return self._call(Call("Info", pb.InfoRequest(), parse_info))

    def tokenize(self, text: str, role_name: str | None = None) -> Tokens:
        return self._call(
            Call("Tokenize", pb.TokenizeRequest(text=text, role=role(role_name)), parse_tokens)
        )

    def embed_tokens(
        self,
        texts: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        role_name: str | None = None,
        long_text: str = "error",
    ) -> list[TokenEmbeddings]:
        """Per-token vectors for each text: the last layer, or the mean of `layers`."""
        request = pb.EmbedRequest(
            texts=list(texts), role=role(role_name), token_vectors=True,
            layers=list(layers or ()), long_text=LONG_TEXT[long_text],
        )  # fmt: skip
        return self._call(Call("Embed", request, parse_token_vectors))

    def create_collection(
        self,
        name: str,
        index: str = "Flat",
        store_tokens: bool = False,
        *,
        metric: str = "cosine",
        ef_search: int = 0,
        nprobe: int = 0,
    ) -> CollectionInfo:
        request = pb.CreateCollectionRequest(
            name=name, index=index, metric=metric, store_tokens=store_tokens,
            ef_search=ef_search, nprobe=nprobe,
        )  # fmt: skip
        return self._call(Call("CreateCollection", request, parse_collection))

    def list_collections(self) -> list[CollectionInfo]:
        return self._call(
            Call("ListCollections", pb.ListCollectionsRequest(),
                 lambda r: [parse_collection(c) for c in r.collections])
        )  # fmt: skip

    def describe_collection(self, name: str) -> CollectionInfo:
        return self._call(Call("DescribeCollection", pb.CollectionRef(name=name), parse_collection))

    def drop_collection(self, name: str) -> None:
        return self._call(Call("DropCollection", pb.CollectionRef(name=name), lambda r: None))

    def count(self, name: str) -> int:
        return self._call(
            Call("DescribeCollection", pb.CollectionRef(name=name), lambda r: r.count)
        )

    def get(self, name: str, ids: Sequence[str], with_vectors: bool = False):  # noqa: ANN201
        """The stored documents for `ids`, in order; None where an id is not stored."""
        ids = list(ids)
        request = pb.GetRequest(collection=name, ids=ids, with_vectors=with_vectors)
        return self._call(Call("Get", request, parse_documents(ids)))

    def delete(self, name: str, ids: Sequence[str]) -> int:
        request = pb.DeleteRequest(collection=name, ids=list(ids))
        return self._call(Call("Delete", request, lambda r: r.deleted))

    def search(
        self,
        name: str,
        query: str | np.ndarray,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the SDK's documented name
        *,
        ef_search: int = 0,
        nprobe: int = 0,
    ) -> list[Hit]:
        """Nearest documents to a text (embedded as a query) or a vector."""
        request = pb.SearchRequest(
            collection=name, k=k, filter_json=json.dumps(filter) if filter else "",
            ef_search=ef_search, nprobe=nprobe,
        )  # fmt: skip
        if isinstance(query, str):
            request.text = query
        else:
            request.vector.CopyFrom(to_tensor(np.asarray(query, dtype=np.float32)))
        return self._call(Call("Search", request, parse_hits))

    def disambiguate(
        self,
        text: str,
        word: str = "",
        senses: Mapping[str, Sequence[str]] | None = None,
        occurrence: int = 0,
        *,
        span: tuple[int, int] | None = None,
        inventory: str | None = None,
        layers: Sequence[int] | None = None,
        centre: bool = True,
        with_sentence: bool = True,
    ) -> Disambiguation:
        """Which sense `word` (its `occurrence`-th appearance, or the characters `span`) has
        in `text`: against `senses` (label -> example sentences with the word), or a stored
        inventory ("default", which ships with the server, when neither is given).
        with_sentence=False compares the word's own vectors only, without its sentence's
        (for a sentence that uses the word in two senses)."""
        request = pb.DisambiguateRequest(
            text=text, word=word, occurrence=occurrence, senses=senses_message(senses or {}),
            inventory=inventory or "", layers=list(layers or ()), no_centring=not centre,
            word_only=not with_sentence,
        )  # fmt: skip
        if span is not None:
            request.span.CopyFrom(pb.Span(start=span[0], end=span[1]))
        return self._call(Call("Disambiguate", request, parse_disambiguation))

    def create_inventory(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> Inventory:
        """Store a sense inventory: word -> sense label -> example sentences."""
        request = pb.CreateInventoryRequest(
            name=name, replace=replace,
            words={w: pb.WordSenses(senses=senses_message(s)) for w, s in words.items()},
        )  # fmt: skip
        return self._call(Call("CreateInventory", request, parse_inventory))

    def list_inventories(self) -> list[Inventory]:
        return self._call(
            Call("ListInventories", pb.ListInventoriesRequest(),
                 lambda r: [parse_inventory(i) for i in r.inventories])
        )  # fmt: skip

    def delete_inventory(self, name: str) -> None:
        return self._call(Call("DeleteInventory", pb.InventoryRef(name=name), lambda r: None))

    def search_occurrences(
        self,
        collection: str,
        text: str,
        word: str = "",
        k: int = 10,
        *,
        occurrence: int = 0,
        span: tuple[int, int] | None = None,
    ) -> list[Occurrence]:
        """Occurrences of `word` in a collection (stored with token vectors) used in the
        sense it has in `text`, best first."""
        request = pb.SearchOccurrencesRequest(
            collection=collection, text=text, word=word, occurrence=occurrence, k=k
        )
        if span is not None:
            request.span.CopyFrom(pb.Span(start=span[0], end=span[1]))
        return self._call(Call("SearchOccurrences", request,
                               lambda r: [parse_occurrence(o) for o in r.occurrences]))  # fmt: skip

    def induce_senses(
        self, collection: str, word: str, k: int | None = None, *, max_k: int = 6,
        central: int = 3,
    ) -> Induction:  # fmt: skip
        """The senses of `word` in a collection, found by clustering its occurrences (k
        chosen by silhouette unless given)."""
        request = pb.InduceSensesRequest(collection=collection, word=word, k=k or 0,
                                         max_k=max_k, central=central)  # fmt: skip
        return self._call(Call("InduceSenses", request, parse_induction))

    def explain(
        self,
        text: str,
        word: str | None = None,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        *,
        occurrence: int = 0,
        span: tuple[int, int] | None = None,
    ) -> Explanation:
        """Attention maps of `layers` (1-based) x `heads` (0-based), all by default (the
        response is bounded: a long text must ask for fewer); for `word`, what it attends to
        most in each layer and head."""
        request = pb.ExplainRequest(text=text, word=word or "", occurrence=occurrence,
                                    layers=list(layers or ()), heads=list(heads or ()))  # fmt: skip
        if span is not None:
            request.span.CopyFrom(pb.Span(start=span[0], end=span[1]))
        return self._call(Call("Explain", request, parse_explanation))

    def compare_layers(
        self, text_a: str, text_b: str, word: str, occurrence_a: int = 0, occurrence_b: int = 0
    ) -> LayerComparison:
        """The cosine of `word`'s vectors in the two texts at every layer (0 = embeddings)."""
        request = pb.CompareLayersRequest(
            text_a=text_a, text_b=text_b, word=word, occurrence_a=occurrence_a,
            occurrence_b=occurrence_b,
        )  # fmt: skip
        return self._call(Call("CompareLayers", request, parse_comparison))


def embed_request(
    texts: Sequence[str], normalize: bool, role_name: str | None, long_text: str
) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        texts=list(texts), role=role(role_name), sentence_vectors=True,
        no_normalize=not normalize, long_text=LONG_TEXT[long_text],
    )  # fmt: skip
