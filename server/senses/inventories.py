"""Sense inventories: word -> {sense label: [example sentences]}, named and stored.

"default" ships with the server (inventory_default.json, written for embedsense) and cannot
be changed; others live in the data directory's store, as durable as the documents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from importlib.resources import files

from embedsense.model.spans import shown, why_not, word_spans
from embedsense.server.index.backend import IndexBackend
from embedsense.server.senses.errors import InventoryExists, InventoryNotFound, SenseInputError

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")  # fullmatch: "$" takes a last "\n"
MAX_EXAMPLES_PER_SENSE = 64

Senses = dict[str, list[str]]  # sense label -> example sentences containing the word


def check_senses(
    word: str, senses: Mapping[str, Sequence[str]], field: str = "senses", word_field: str = ""
) -> Senses:
    """Examples per sense, validated: at least two senses, each with examples that contain
    the word. Errors name the offending label or example; their param is `field` (the
    request's field that holds the senses), or for the word itself `word_field` (the field
    it came from; "": `field`)."""
    if not word.strip():
        raise SenseInputError("word: empty or only whitespace", word_field or field)
    if word != word.strip():  # as a label: " 苹果" would be a word no lookup of 苹果 finds
        raise SenseInputError(
            f"word {shown(word)}: whitespace around it; give the word alone", word_field or field
        )
    if len(senses) < 2:
        raise SenseInputError(
            f"{shown(word)}: at least two senses are needed, got {len(senses)}", field
        )
    checked: Senses = {}
    for label, examples in senses.items():
        examples = [e for e in examples if e.strip()]
        if not label.strip():
            raise SenseInputError(
                f"{shown(word)}: a sense needs a label (not only whitespace)", field
            )
        if label != label.strip():  # "a" and "a " would be two senses that read as one
            raise SenseInputError(
                f"{shown(word)}: sense {label!r}: whitespace around the label", field
            )
        if not examples:
            raise SenseInputError(f"{shown(word)}: sense {label!r} has no examples", field)
        if len(examples) > MAX_EXAMPLES_PER_SENSE:
            raise SenseInputError(
                f"{shown(word)}: sense {label!r} has {len(examples)} examples; the limit is "
                f"{MAX_EXAMPLES_PER_SENSE}",
                field,
            )
        for example in examples:
            if not word_spans(example, word):  # as a word: "apple" is not in "pineapple"
                raise SenseInputError(
                    f"{shown(word)}: an example of sense {label!r} does not contain the word"
                    f"{why_not(example, word)}: {example[:60]!r}",
                    field,
                )
        checked[label] = list(examples)
    return checked


def check_name(name: str) -> None:
    """Every inventory call refuses a name no inventory can have, as one refusal: not as
    "not found", which would say such an inventory might exist."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SenseInputError(
            f"inventory name {name!r}: 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )


def _builtin() -> dict[str, Senses]:
    path = files("embedsense.server.senses") / "inventory_default.json"
    return json.loads(path.read_text(encoding="utf-8"))["words"]


class Inventories:
    """Named inventories, stored through the index backend: every replica sees the same."""

    def __init__(self, store: IndexBackend) -> None:
        self.store = store
        self.default = _builtin()

    def create(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> None:
        check_name(name)
        if name == DEFAULT:
            raise InventoryExists(
                "the 'default' inventory ships with the server: pick another name"
            )
        if not words:
            raise SenseInputError(f"inventory {name!r}: no words", "words")
        checked = {word: check_senses(word, senses, "words") for word, senses in words.items()}
        if not self.store.put_inventory(name, json.dumps(checked, ensure_ascii=False), replace):
            raise InventoryExists(f"inventory {name!r} already exists (replace it explicitly)")

    def get(self, name: str) -> dict[str, Senses]:
        if name == DEFAULT:
            return self.default
        check_name(name)
        words = self.store.get_inventory(name)
        if words is None:
            raise InventoryNotFound(f"no inventory named {name!r}")
        return json.loads(words)

    def senses(self, name: str, word: str) -> Senses:
        inventory = self.get(name)
        if word not in inventory:
            raise InventoryNotFound(
                f"inventory {name!r} has no entry for {shown(word)}; it covers "
                f"{', '.join(sorted(inventory))}"
            )
        return inventory[word]

    def list(self) -> list[tuple[str, dict[str, Senses], bool]]:
        """(name, words, built in) for every inventory, "default" first."""
        stored = [(n, json.loads(w), False) for n, w in self.store.inventories()]
        return [(DEFAULT, self.default, True), *stored]

    def delete(self, name: str) -> None:
        check_name(name)
        if name == DEFAULT:
            raise SenseInputError("the 'default' inventory ships with the server: it stays")
        if not self.store.delete_inventory(name):
            raise InventoryNotFound(f"no inventory named {name!r}")
