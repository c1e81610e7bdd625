"""Word senses over the engine and the index: disambiguate a word in context, find the
occurrences used in the same sense, and induce the senses of a word in a collection."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from embedsense.model.spans import shown
from embedsense.server.engine import Engine
from embedsense.server.index import CollectionBackend, IndexBackend, ModelMismatch
from embedsense.server.index.threads import IndexThreads
from embedsense.server.senses import method
from embedsense.server.senses.errors import Abandoned, NoTokenVectors, SenseInputError
from embedsense.server.senses.inventories import DEFAULT, Inventories, check_senses
from embedsense.server.senses.words import (
    Occurrence,
    example_occurrences,
    locate,
    occurrences_of,
    stored_word_vectors,
    word_vectors,
)

# Occurrence search and induction read at most this many documents containing the word,
# DOCUMENTS_PER_READ at a time (each with its token vectors: megabytes for a long one), and
# compare at most MAX_COMPARED of its occurrences (a vector kept for each, and one for each
# sentence holding it).
MAX_CANDIDATE_DOCUMENTS = 20_000
DOCUMENTS_PER_READ = 32
MAX_COMPARED = 50_000
# Occurrence search and induction over a collection (seconds of reading and numpy for a common
# word) run on threads of their own, this many calls at once: a few of them must not hold
# every thread of the pool that all other calls' index reads and writes run on.
SENSE_THREADS = 2
# Induction's bound on the senses the silhouette chooses among, unless the caller gives one.
DEFAULT_MAX_K = 6

T = TypeVar("T")


@dataclass
class Disambiguation:
    label: str
    probabilities: dict[str, float]
    similarities: dict[str, float]
    nearest: list[tuple[str, str, float]]  # (label, example sentence, cosine)
    occurrence: Occurrence
    layers: list[int]  # hidden states averaged (-1: the last)
    centred: bool
    with_sentence: bool
    temperature: float = method.TEMPERATURE

    def best_first(self) -> list[str]:
        """The labels, most probable first (as both APIs list the scores)."""
        return sorted(self.probabilities, key=lambda label: -self.probabilities[label])


@dataclass
class FoundOccurrence:
    id: str
    text: str
    start: int
    end: int
    score: float
    metadata: dict = field(default_factory=dict)


@dataclass
class InducedSense:
    size: int
    central: list[FoundOccurrence]  # the most central occurrences, best first


@dataclass
class Induction:
    senses: list[InducedSense]  # largest first
    occurrences: int
    silhouette: float


@dataclass
class Gathered:
    items: list[tuple[str, Occurrence, dict]] = field(default_factory=list)  # (id, where, metadata)
    words: list[np.ndarray] = field(default_factory=list)  # (n, dim) per document
    contexts: list[np.ndarray] = field(default_factory=list)  # (s, dim) per document
    owners: list[np.ndarray] = field(default_factory=list)  # (n,) per document: rows in contexts
    sentences: int = 0  # rows in contexts so far
    uncovered: int = 0  # occurrences no token covers


@dataclass
class Occurrences:
    """A word's occurrences in a collection: their word vectors, and their sentences'
    vectors once per sentence (`owner`: each occurrence's row in `contexts`)."""

    items: list[tuple[str, Occurrence, dict]]  # (id, where, metadata)
    words: np.ndarray  # (n, dim)
    contexts: np.ndarray | None  # (sentences, dim); None where not read
    owner: np.ndarray | None  # (n,); None where not read


def gather_occurrences(
    collection: CollectionBackend,
    word: str,
    stop: threading.Event | None = None,
    *,
    with_sentences: bool = True,
) -> Gathered:
    """The word's occurrences in the collection's stored documents, in label order, with
    their word vectors and (`with_sentences`) their sentences' vectors, within
    MAX_CANDIDATE_DOCUMENTS and MAX_COMPARED. Abandoned once `stop` is set."""
    ids = collection.ids_containing(word, MAX_CANDIDATE_DOCUMENTS)
    found = Gathered()
    for start in range(0, len(ids), DOCUMENTS_PER_READ):
        if stop is not None and stop.is_set():
            raise Abandoned(f"occurrences of {shown(word)} in {collection.name!r}")
        for doc in collection.get(ids[start : start + DOCUMENTS_PER_READ]):
            if doc is None:  # deleted in between
                continue
            room = MAX_COMPARED - len(found.items)
            occurrences = occurrences_of(word, doc.text)[:room]
            stored = stored_word_vectors(doc, occurrences, with_sentences=with_sentences)
            found.uncovered += stored.uncovered
            if stored.occurrences:
                found.items += [(doc.id, o, doc.metadata) for o in stored.occurrences]
                found.words.append(stored.words)
                if with_sentences:
                    found.owners.append(stored.sentence_of + found.sentences)
                    found.contexts.append(stored.sentences)
                    found.sentences += len(stored.sentences)
            if len(found.items) >= MAX_COMPARED:
                return found
    return found


class Senses:
    def __init__(self, engine: Engine, catalog: IndexBackend, index_threads: IndexThreads) -> None:
        self.engine = engine
        self.catalog = catalog
        self.index_threads = index_threads  # its lookups; gathering runs on its own threads
        self.inventories = Inventories(catalog)
        self._work = ThreadPoolExecutor(SENSE_THREADS, thread_name_prefix="embedsense-senses")
        # A call holds a slot from its first job on the threads to its last: its second job
        # (ranking, clustering) would otherwise queue behind every call's first, and all of
        # them would end late together instead of one after another.
        self._slots = asyncio.Semaphore(SENSE_THREADS)

    def close(self) -> None:
        """End the senses' threads, once the work on them has ended: calls cut off by a stop
        end theirs at its next check (see _in_pool), and only then may the index close."""
        self._work.shutdown(wait=True, cancel_futures=True)

    async def _in_pool(self, work: Callable[[threading.Event], T]) -> T:
        """`work(stop)` on the senses' own threads (with the call's context: its request id
        on log lines). When the call is cancelled (the caller hung up, or its deadline
        passed) `stop` is set: the work ends at its next check, where it would have run on
        for nobody, holding a thread the next call waits for."""
        stop = threading.Event()
        run = contextvars.copy_context().run
        try:
            return await asyncio.get_running_loop().run_in_executor(self._work, run, work, stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def disambiguate(
        self,
        text: str,
        word: str = "",
        *,
        span: tuple[int, int] | None = None,
        occurrence: int = 0,
        senses: Mapping[str, Sequence[str]] | None = None,
        inventory: str | None = None,
        layers: Sequence[int] | None = None,
        centre: bool = True,
        with_sentence: bool = True,
    ) -> Disambiguation:
        """The sense of the word at `span` (or the `occurrence`-th `word`) in `text`, against
        `senses` (label -> examples) or a stored inventory ("default" when neither)."""
        target = locate(text, word, span, occurrence)
        word = target.word
        if senses:
            if inventory:
                raise SenseInputError("give senses or an inventory, not both", "inventory")
            examples = check_senses(word, senses, word_field="word" if span is None else "span")
        elif inventory and inventory != DEFAULT:  # stored in the index: maybe a round trip
            examples = await self.index_threads.run(self.inventories.senses, inventory, word)
        else:
            examples = self.inventories.senses(DEFAULT, word)
        labelled = [(label, e) for label, sentences in examples.items() for e in sentences]
        occurrences = [[target]] + [example_occurrences(e, word) for _, e in labelled]
        found = await word_vectors(self.engine, occurrences, layers)
        weight = method.CONTEXT_WEIGHT if with_sentence else 0.0
        vectors = method.features(found.words, found.contexts, weight)
        by_label: dict[str, list[np.ndarray]] = {label: [] for label in examples}
        for (label, _), vector in zip(labelled, vectors[1:], strict=True):
            by_label[label].append(vector)
        decision = method.disambiguate(
            vectors[0], {label: np.stack(v) for label, v in by_label.items()}, centre=centre
        )
        return Disambiguation(
            label=decision.label,
            probabilities=decision.probabilities,
            similarities=decision.similarities,
            nearest=[(label, examples[label][i], cos) for label, i, cos in decision.nearest],
            occurrence=target,
            layers=list(layers) if layers else [-1],
            centred=centre,
            with_sentence=with_sentence,
        )

    # ------------------------------------------------------------ over a collection

    async def _stored_occurrences(
        self, collection: CollectionBackend, word: str, *, with_sentences: bool = True
    ) -> Occurrences | None:
        """Every occurrence of `word` in the collection (up to the bounds above), with its
        stored word vectors and (`with_sentences`) its sentences' vectors; None where the word
        does not occur."""
        if not collection.store_tokens:
            raise NoTokenVectors(
                f"collection {collection.name!r} keeps no token vectors: create it with "
                "store_tokens=True to search or induce word senses in it"
            )
        held = (await self.index_threads.run(collection.info)).model
        if held != self.engine.model.spec.name:  # another model's vectors: not comparable
            raise ModelMismatch(
                f"collection {collection.name!r} holds token vectors of {held!r}, not of the "
                f"served {self.engine.model.spec.name!r}: serve that model to search or "
                "induce word senses in it"
            )
        # Seconds of work for a common word: off the event loop, which serves every call.
        found = await self._in_pool(
            lambda stop: gather_occurrences(collection, word, stop, with_sentences=with_sentences)
        )
        if not found.items:
            if found.uncovered:
                raise SenseInputError(
                    f"no token covers {shown(word)} where it occurs in collection "
                    f"{collection.name!r} ({found.uncovered} place{'s' * (found.uncovered > 1)}): "
                    "the tokenizer keeps none for whitespace alone",
                    "word",
                )
            return None
        contexts = np.concatenate(found.contexts) if with_sentences else None
        owner = np.concatenate(found.owners) if with_sentences else None
        return Occurrences(found.items, np.concatenate(found.words), contexts, owner)

    async def search_occurrences(
        self,
        collection_name: str,
        text: str,
        word: str = "",
        *,
        span: tuple[int, int] | None = None,
        occurrence: int = 0,
        k: int = 10,
    ) -> tuple[list[FoundOccurrence], int]:
        """The occurrences of the word in the collection whose sense is closest to its sense
        in `text`, best first; and how many occurrences were compared."""
        collection = await self.index_threads.run(self.catalog.get, collection_name)
        target = locate(text, word, span, occurrence)
        async with self._slots:
            found = await self._stored_occurrences(collection, target.word)
            # The query is encoded even then: a text the model refuses is refused either way.
            query = await word_vectors(self.engine, [target])
            if found is None:  # a search that finds nothing answers nothing, as Search does
                return [], 0

            def ranked() -> tuple[np.ndarray, np.ndarray]:  # 50,000 x dim: off the loop too
                scores = method.rank_occurrences(
                    query.words[0], query.contexts[0], found.words, found.contexts, found.owner
                )
                return scores, np.argsort(-scores, kind="stable")[:k]

            scores, order = await self._in_pool(lambda _: ranked())
        items = found.items
        return [
            FoundOccurrence(items[i][0], items[i][1].text, items[i][1].start, items[i][1].end,
                            float(scores[i]), items[i][2])
            for i in order
        ], len(items)  # fmt: skip

    async def induce_senses(
        self, collection_name: str, word: str, k: int | None = None, max_k: int | None = None,
        central: int = 3,
    ) -> Induction:  # fmt: skip
        """Cluster the word's occurrences in the collection into senses, without labels: k of
        them, or as many as the silhouette chooses among 2..max_k (6 unless given)."""
        collection = await self.index_threads.run(self.catalog.get, collection_name)
        if not word:
            raise SenseInputError("word: empty", "word")
        if k is not None and max_k is not None and k > max_k:  # one would be dropped unsaid
            # k within max_k agrees with it: the SDK sent max_k=6 beside every k until 2026-12.
            raise SenseInputError(
                f"k={k} and max_k={max_k}: k names the senses' number, max_k bounds the "
                "silhouette's choice of it; give one, or a k within max_k",
                "k",
            )
        max_k = DEFAULT_MAX_K if max_k is None else max_k
        for name, value in (("k", k), ("max_k", max_k)):
            if value is not None and not 1 <= value <= method.MAX_SENSES:
                raise SenseInputError(
                    f"{name}: {value}; a word has 1-{method.MAX_SENSES} senses", name
                )
        async with self._slots:
            # The word's vectors alone: adding the sentence's did not help clustering (README).
            found = await self._stored_occurrences(collection, word, with_sentences=False)
            if found is None:
                raise SenseInputError(
                    f"{shown(word)} does not occur in collection {collection_name!r}", "word"
                )
            items, words = found.items, found.words
            if k is not None and k > len(items):  # it was cut to their number, in silence
                raise SenseInputError(
                    f"k: {k} senses of {len(items)} occurrences of {shown(word)} in "
                    f"{collection_name!r}; at most {len(items)}, or no k to let the silhouette "
                    "choose",
                    "k",
                )
            clustering = await self._in_pool(lambda stop: method.induce(words, k, max_k, stop=stop))
        senses = []
        for cluster in range(clustering.k):
            members = np.flatnonzero(clustering.labels == cluster)
            if not len(members):
                continue
            best = members[np.argsort(-clustering.centrality[members], kind="stable")][:central]
            senses.append(InducedSense(len(members), [
                FoundOccurrence(items[i][0], items[i][1].text, items[i][1].start,
                                items[i][1].end, float(clustering.centrality[i]), items[i][2])
                for i in best
            ]))  # fmt: skip
        senses.sort(key=lambda s: -s.size)
        return Induction(senses, len(items), clustering.silhouette)
