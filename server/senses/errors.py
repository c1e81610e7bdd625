"""The senses' errors; each maps to one gRPC status in the API layer."""

from __future__ import annotations


class SenseInputError(ValueError):
    """INVALID_ARGUMENT: the word is not in the text, a sense has no examples...
    `param`: the request field at fault, where one is (HTTP's error names it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NoTokenVectors(Exception):
    """FAILED_PRECONDITION: the collection was not created with store_tokens=True."""


class InventoryNotFound(KeyError):
    """NOT_FOUND: no inventory by that name, or the word is not in it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InventoryExists(Exception):
    """ALREADY_EXISTS: an inventory by that name exists (and replace was not asked)."""


class Abandoned(Exception):
    """The call that asked for the work is gone (it hung up, or its deadline passed): the work
    stops at its next check. Nobody is left to answer."""
