"""The word-sense calls as both APIs make them: the request checks (checks.py), then the
senses logic (senses/). gRPC's service and HTTP's sense routes only translate shapes around
these, as they do around collection_ops.py for documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from embedsense.model.spans import shown
from embedsense.server import engine as eng
from embedsense.server.api.checks import (
    MAX_OCCURRENCES,
    BadRequest,
    Limits,
    check_text,
    check_texts,
    check_word,
)
from embedsense.server.api.collection_ops import CollectionOps
from embedsense.server.api.settings import ServerSettings
from embedsense.server.batching import Priority
from embedsense.server.senses.errors import SenseInputError
from embedsense.server.senses.inventories import DEFAULT, check_name
from embedsense.server.senses.senses import Disambiguation, FoundOccurrence, Induction, Senses

# word -> sense label -> example sentences
Words = Mapping[str, Mapping[str, Sequence[str]]]
# An inventory as listed: its name, its words, whether the server ships it.
ListedInventory = tuple[str, dict[str, dict[str, list[str]]], bool]
# What to ask for when a reply of inventories passes max_message_bytes.
INVENTORIES_FEWER = "fewer or smaller inventories: delete one you no longer use"
INVENTORY_FEWER = "it from a server with a larger max_message_bytes"


class SenseOps:
    def __init__(self, senses: Senses, collections: CollectionOps, settings: ServerSettings):
        self.senses = senses
        self.collections = collections
        self.settings = settings

    def _text(self, text: str, field: str = "text") -> str:
        return check_text(text, field, self.settings.max_text_chars)

    def check_examples(self, senses: Mapping[str, Sequence[str]], field: str) -> None:
        """A word's examples are embedded together, in one engine call: each is a text the
        model can take, and together they are what one request may send."""
        for label, examples in senses.items():
            for i, example in enumerate(examples):
                self._text(example, f"{field}[{label!r}].examples[{i}]")
        if every := [e for examples in senses.values() for e in examples]:
            check_texts(every, f"{field} (every example)", Limits.of(self.settings))

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
        priority: Priority | None = None,
    ) -> Disambiguation:
        if senses is not None and not senses:  # not the inventory's, said without a word
            raise BadRequest("senses: empty; give two senses or more, or leave senses out for "
                             "the inventory's", "senses")  # fmt: skip
        if inventory is not None:
            try:
                check_name(inventory)
            except SenseInputError as err:  # a name no inventory has, "" too: not the default
                raise BadRequest(str(err), "inventory") from None
        self.check_examples(senses or {}, "senses")
        text = self._text(text)
        _word_or_span(word, span)
        # The senses module calls the engine itself: the priority goes by the context.
        with eng.priority_scope(_or_query(priority)):
            return await self.senses.disambiguate(
                text, check_word(word), span=span, occurrence=occurrence,
                senses=senses, inventory=inventory, layers=layers, centre=centre,
                with_sentence=with_sentence,
            )  # fmt: skip

    async def create_inventory(
        self, name: str, words: Words, replace: bool = False
    ) -> dict[str, dict[str, list[str]]]:
        """Store it; the inventory as stored."""
        for word, senses in words.items():  # as disambiguate's own senses
            self.check_examples(senses, f"words[{shown(word)}].senses")
        stored = {word: {label: list(examples) for label, examples in senses.items()}
                  for word, senses in words.items()}  # fmt: skip
        threads = self.senses.index_threads
        await threads.run(self.senses.inventories.create, name, stored, replace)
        return await threads.run(self.senses.inventories.get, name)

    async def inventories(self) -> list[ListedInventory]:
        return await self.senses.index_threads.run(self.senses.inventories.list)

    async def inventory(self, name: str) -> ListedInventory:
        words = await self.senses.index_threads.run(self.senses.inventories.get, name)
        return name, words, name == DEFAULT

    async def delete_inventory(self, name: str) -> None:
        await self.senses.index_threads.run(self.senses.inventories.delete, name)

    async def search_occurrences(
        self,
        collection: str,
        text: str,
        word: str = "",
        *,
        span: tuple[int, int] | None = None,
        occurrence: int = 0,
        k: int = 10,
        priority: Priority | None = None,
    ) -> tuple[list[FoundOccurrence], int]:
        """The occurrences found, best first, and how many were compared."""
        _within_occurrences(k, "k")
        await self.collections.collection(collection)
        text = self._text(text)
        _word_or_span(word, span)
        with eng.priority_scope(_or_query(priority)):
            return await self.senses.search_occurrences(
                collection, text, check_word(word), span=span,
                occurrence=occurrence, k=k,
            )  # fmt: skip

    async def induce_senses(
        self, collection: str, word: str, k: int | None = None, max_k: int | None = None,
        central: int = 3,
    ) -> Induction:  # fmt: skip
        _within_occurrences(central, "central")
        await self.collections.collection(collection)
        return await self.senses.induce_senses(
            collection, check_word(word), k=k, max_k=max_k, central=central
        )


def _within_occurrences(count: int, field: str) -> None:
    """A number of occurrences to answer: refused past MAX_OCCURRENCES, as search refuses a k
    past its bound, rather than answered with fewer than asked."""
    if not 1 <= count <= MAX_OCCURRENCES:
        raise BadRequest(f"{field} must be within 1-{MAX_OCCURRENCES:,}, got {count}", field)


def _word_or_span(word: str, span: tuple[int, int] | None) -> None:
    if not word and span is None:
        raise BadRequest("word: empty; give the word, or its characters as a span", "word")


def _or_query(priority: Priority | None) -> Priority:
    """A query's priority unless asked otherwise: these calls answer someone waiting."""
    return Priority.QUERY if priority is None else priority  # not `or`: BULK is 0
