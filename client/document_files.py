"""Documents from the files `embedsense index` reads, checked line by line.

A `.jsonl` (or `.ndjson`) file holds one JSON object per line: {"text": ..., "id"?: ...,
"metadata"?: {...}}; any other file holds one document per non-empty line. A document
without an id gets one derived from its text and metadata (embedsense.proto.ids), so that
indexing the same file again replaces what it stored instead of storing it twice. Texts,
metadata and ids are checked against the server's rules (embedsense.proto.values).

Every error is an InputError naming the file as it was given and the line: the CLI checks
a whole file before it sends any of it, so that a bad line never reaches gRPC's request
stream (where an exception only reads "Exception iterating requests!").

That takes two reads of a file, and a pipe gives its bytes once: standard input (`-`), a
pipe, a FIFO or /dev/stdin is read whole into memory (`read_whole`, up to
PIPED_LIMIT_BYTES) and its documents read from those bytes.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedsense.proto.ids import content_id
from embedsense.proto.values import (
    KeyTwice,
    blank_problem,
    id_problem,
    length_problem,
    metadata_problem,
    once_each,
    text_problem,
)

FIELDS = ("text", "id", "metadata")


class InputError(ValueError):
    """A file that cannot be read as documents: `where` (file:line) and why."""


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")  # in any case
STANDARD_INPUT = "-"
# What a pipe may hold: it is kept whole in memory, where a file is read in parts.
PIPED_LIMIT_BYTES = 256 * 1024 * 1024


def read_once(name: str) -> bool:
    """Whether file `name` gives its bytes only once: `-` (standard input), a pipe, a FIFO,
    a terminal, /dev/stdin or /dev/fd/N on one of them. A regular file can be read again."""
    if name == STANDARD_INPUT:
        return True
    try:
        mode = os.stat(name).st_mode
    except OSError:  # read_documents says why it cannot be read
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_whole(name: str) -> bytes:
    """The bytes of file `name` (`-`: standard input's), read once. Raises InputError for
    one that cannot be read, or holds more than PIPED_LIMIT_BYTES."""
    limit = PIPED_LIMIT_BYTES
    try:
        if name == STANDARD_INPUT:
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as stream:
                data = stream.read(limit + 1)
    except OSError as err:
        raise InputError(f"{name}: {file_problem(err)}") from None
    if len(data) > limit:
        raise InputError(
            f"{name}: more than {_size(limit)}, and standard input or a pipe is held whole in "
            "memory (it can be read only once): name a file instead, which is read in parts"
        )
    return data


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 else f"{count} bytes"


def is_json_lines(name: str, file_format: str | None = None) -> bool:
    """Whether file `name` holds JSON lines: as `file_format` ("jsonl" or "text") says where
    given, else by its suffix. A pipe has no suffix to go by."""
    if file_format is not None:
        return file_format == "jsonl"
    return name.lower().endswith(JSON_LINES_SUFFIXES)


def read_documents(
    name: str, max_text_chars: int = 0, content: bytes | None = None, jsonl: bool | None = None
) -> Iterator[dict[str, Any]]:
    """The documents of file `name`, each a dict with "text", "id" and, from a JSON line
    that has it, "metadata"; read from `content` where given (a pipe's bytes, from
    `read_whole`), else from the file; as JSON lines where `jsonl` (None: by the name, see
    `is_json_lines`). Raises InputError for a missing or unreadable file, a line that is not
    UTF-8, (in JSON lines) a line that is not a JSON object with the fields above, and a
    text longer than `max_text_chars` (the server's; 0: not checked)."""
    if jsonl is None:
        jsonl = is_json_lines(name)
    try:
        # Closed by the with below: only opening is checked here.
        lines = io.BytesIO(content) if content is not None else open(name, "rb")
    except OSError as err:
        raise InputError(f"{name}: {file_problem(err)}") from None
    with lines:
        try:
            for number, raw in enumerate(lines, 1):
                try:
                    # utf-8-sig: a byte-order mark on the first line is not part of the text.
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"{name}:{number}: not UTF-8 (byte {raw[err.start]:#04x} at column "
                        f"{err.start + 1})"
                    ) from None
                if not line.strip():
                    continue
                if jsonl:
                    yield parse_jsonl_line(line, name, number, max_text_chars)
                else:
                    text = line.rstrip("\r\n")
                    check_text(text, f"{name}:{number}", max_text_chars)
                    yield {"text": text, "id": content_id(text, {})}
        except OSError as err:  # e.g. a directory, which opens but cannot be read
            raise InputError(f"{name}: {file_problem(err)}") from None


def parse_jsonl_line(line: str, name: str, number: int, max_text_chars: int = 0) -> dict[str, Any]:
    """One .jsonl line as a document (its id a string, made from the text when absent)."""
    where = f"{name}:{number}"
    try:
        doc = json.loads(line, object_pairs_hook=once_each)
    except KeyTwice as err:  # the server refuses the same in metadata_json
        raise InputError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(doc, dict):
        raise InputError(f'{where}: expected a JSON object with "text", got {type(doc).__name__}')
    unknown = [key for key in doc if key not in FIELDS]
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}: a line has {', '.join(FIELDS)} (text needed)"
        )
    if "text" not in doc:
        raise InputError(f'{where}: no "text": a line has {", ".join(FIELDS)} (text needed)')
    text = doc["text"]
    if not isinstance(text, str) or blank_problem(text) is not None:
        raise InputError(
            f'{where}: "text" must be a non-empty string (not only whitespace), got {text!r:.40}'
        )
    check_text(text, where, max_text_chars)
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f'{where}: "metadata" must be a JSON object, got {metadata!r:.40}')
    if metadata is not None and (wrong := metadata_problem(metadata, "metadata")) is not None:
        raise InputError(f"{where}: {wrong}")
    given = doc.get("id")
    if given is None:
        doc_id = content_id(text, metadata or {})
    elif isinstance(given, str | int) and not isinstance(given, bool) and str(given):
        doc_id = str(given)
    else:
        raise InputError(f'{where}: "id" must be a string or an integer, got {given!r:.40}')
    if (wrong := id_problem(doc_id)) is not None:
        raise InputError(f'{where}: "id": {wrong}')
    document: dict[str, Any] = {"text": text, "id": doc_id}
    if metadata is not None:
        document["metadata"] = metadata
    return document


def check_text(text: str, where: str, max_chars: int = 0) -> None:
    """The server's rules for a text (its length when `max_chars`), checked here so that a
    bad line stops the file before any of it is sent."""
    if (wrong := text_problem(text) or length_problem(text, max_chars)) is not None:
        raise InputError(f"{where}: {wrong}")


def file_problem(err: OSError) -> str:
    """Why a file could not be read or written, in a few words."""
    if isinstance(err, FileNotFoundError) and err.filename:
        folder = Path(os.fsdecode(err.filename)).parent
        if not folder.is_dir():  # the file's folder is what is missing
            return f"no such folder: {folder}"
    reasons = {
        FileNotFoundError: "no such file",
        IsADirectoryError: "is a directory",
        PermissionError: "permission denied",
    }
    return reasons.get(type(err), err.strerror or str(err))
