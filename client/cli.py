"""`embedsense`: serve, and talk to a server from the shell.

    embedsense serve --data-dir ./data
    embedsense info
    embedsense index corpus.txt --collection notes
    embedsense search notes "苹果手机" -k 5
    embedsense collections create|describe|drop notes; embedsense collections
    embedsense docs get|delete|count|export notes ... --filter '{"lang": "zh"}'
    embedsense embed "我喜欢吃苹果" --tokens
    embedsense disambiguate "我买了最新的苹果手机" 苹果
    embedsense occurrences notes "我喜欢吃苹果" 苹果
    embedsense induce notes 苹果
    embedsense explain "我喜欢吃苹果" --word 苹果 --compare "我买了最新的苹果手机" --out a.png

Output is a readable table, or JSON with --json. The target comes from --target or
EMBEDSENSE_TARGET; several servers as --target a:50051 --target b:50051, or a comma-separated
list. The API key from --api-key or --api-key-file (kept out of `ps`), else
EMBEDSENSE_API_KEY or EMBEDSENSE_API_KEY_FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tqdm import tqdm

from embedsense.client import (
    TLS,
    AlreadyExists,
    Client,
    EmbedSenseError,
    NotFound,
    Unavailable,
    cli_data,
)
from embedsense.client._api import DEFAULT_MAX_K
from embedsense.client.bulk import chunks
from embedsense.client.document_files import (
    PIPED_LIMIT_BYTES,
    STANDARD_INPUT,
    file_problem,
    is_json_lines,
    read_documents,
    read_once,
    read_whole,
)
from embedsense.client.targets import checked_target, port_problem, with_port
from embedsense.proto.values import KeyTwice, once_each, threshold_problem

# Exit statuses: 1 when the server refused or failed a call, 2 when the command line or a
# file it names is wrong (found here, before anything is sent).
SERVER_ERROR = 1
USAGE_ERROR = 2
SIGPIPE_STATUS = 141  # as a shell reports a command that SIGPIPE ended (128 + 13)
DEFAULT_TIMEOUT = 60.0  # seconds per call
# An occurrence in a table: its word and this many characters each side (--json: the text).
MARKED_CONTEXT_CHARS = 40
ONE_LINE = str.maketrans("\r\n\t", "   ")
EXIT_STATUSES = """exit status: 0 done; 1 the server refused or failed the call (its status and
message follow "embedsense: error:"); 2 the command line or a file it names is wrong
(found before anything is sent); 130 interrupted; 141 the output's reader closed it (head)."""


class UsageError(ValueError):
    """The command line, or a file it names, is wrong: one line on stderr, exit status 2."""


class Conflict(Exception):
    """What the server holds does not fit the command (a collection with another index),
    learned from the server: one line on stderr, exit status 1, as its own refusal."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"embedsense: error: {message} (see `{self.prog} --help`)\n")


def at_least(minimum: int, meaning: str = "", maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (and <= maximum, if given); else an error
    that says what is valid."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: {meaning or f'expected {minimum} or more'}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value}: expected {minimum} to {maximum}")
        return value

    return parse


def score_threshold(raw: str) -> float:
    """An argparse type: a number a search's threshold can be (finite, within float32's
    range), so that the flag is named where the server would name its field."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if (wrong := threshold_problem(value)) is not None:
        raise argparse.ArgumentTypeError(f"{raw}: {wrong}")
    return value


def seconds(raw: str) -> float:
    """An argparse type: a finite number of seconds above 0 (a deadline of 0 fails every
    call before it starts)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{raw}: expected a number of seconds above 0")
    return value


def span_of(raw: str) -> tuple[int, int]:
    """An argparse type: START:END, characters START to END-1 of a text."""
    start, colon, end = raw.partition(":")
    if not (colon and start.isdigit() and end.isdigit()) or int(start) >= int(end):
        raise argparse.ArgumentTypeError(f"{raw!r}: expected START:END, START below END (10:12)")
    return int(start), int(end)


def width(text: str) -> int:
    """Columns a text takes in a terminal: CJK characters count double."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell (CJK characters count double)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c + " " * (w - width(c)) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# Where a TLS file comes from when its flag is not given (the server's own variables have
# other names, so that one environment can hold both sides' settings).
TLS_VARIABLES = {
    "tls_ca": "EMBEDSENSE_TLS_CA",
    "tls_cert": "EMBEDSENSE_TLS_CLIENT_CERT",
    "tls_key": "EMBEDSENSE_TLS_CLIENT_KEY",
}


def tls_of(args: argparse.Namespace) -> TLS | None:
    """The channel's TLS from --tls / --tls-ca / --tls-cert / --tls-key, or their variables
    (None: plaintext). Any one of them turns TLS on: a client certificate is never dropped
    in silence, and one without its key is refused naming the flag or variable it came from."""
    ca, _ = tls_setting(args, "tls_ca")
    cert, cert_from = tls_setting(args, "tls_cert")
    key, key_from = tls_setting(args, "tls_key")
    if bool(cert) != bool(key):
        given, missing = (cert_from, "tls_key") if cert else (key_from, "tls_cert")
        wanted = TLS_VARIABLES[missing]
        if given.startswith("--"):  # either of the other's would do
            wanted = f"--{missing.replace('_', '-')} (or {wanted})"
        raise UsageError(
            f"{given} without {wanted}: the client certificate and its key go together"
        )
    if not (args.tls or ca or cert):
        return None
    return TLS(ca, cert, key)


def tls_setting(args: argparse.Namespace, name: str) -> tuple[str | None, str]:
    """A TLS file's path (None: not given) and where it came from: its flag, else its
    variable."""
    if given := getattr(args, name):
        return given, f"--{name.replace('_', '-')}"
    variable = TLS_VARIABLES[name]
    return os.environ.get(variable) or None, variable


def emit(args: argparse.Namespace, payload: Any, readable: str) -> None:
    print(json.dumps(payload, ensure_ascii=False, default=_jsonable) if args.json else readable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32:  # its own shortest digits, as HTTP writes them: a
            # float64's repr of it carries ~8 more digits of nothing (0.029173726215958595)
            return value.astype(str).astype(np.float64).tolist()
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def api_key_of(args: argparse.Namespace) -> str | None:
    """The key to send: --api-key, else the first key in --api-key-file, else the first of
    EMBEDSENSE_API_KEY's comma-separated keys, or of EMBEDSENSE_API_KEY_FILE's; None when
    there is none."""
    if args.api_key and args.api_key_file:
        raise UsageError("--api-key and --api-key-file: give one of them")
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        return read_key(args.api_key_file, "--api-key-file")
    return api_key_from_env()


def api_key_from_env() -> str | None:
    """The first of EMBEDSENSE_API_KEY's keys, else of EMBEDSENSE_API_KEY_FILE's: the
    server's own variables, where a container's client finds them. None when neither is set."""
    # The server reads this variable as keys separated by commas: any one will do (and a
    # secret file's newline is not the key's).
    listed = [key.strip() for key in os.environ.get("EMBEDSENSE_API_KEY", "").split(",")]
    if any(listed):
        return next(key for key in listed if key)
    if os.environ.get("EMBEDSENSE_API_KEY_FILE"):
        return read_key(os.environ["EMBEDSENSE_API_KEY_FILE"], "EMBEDSENSE_API_KEY_FILE")
    return None


def read_key(path: str, source: str) -> str:
    """The first non-empty line of a key file (the server's file may hold several keys, one
    a line: any one of them will do)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        why = file_problem(err) if isinstance(err, OSError) else "not UTF-8 text"
        raise UsageError(f"{source} {path}: {why}") from None
    key = next((line.strip() for line in lines if line.strip()), "")
    if not key:
        raise UsageError(f"{source} {path}: the file holds no key (expected one key a line)")
    return key


# ------------------------------------------------------------------ commands


def cmd_serve(server_args: list[str]) -> int:
    """Run the server's own program (`python -m embedsense.server`) in this process's place:
    the client imports nothing of the server, which needs the `server` extra."""
    if importlib.util.find_spec("embedsense.server") is None:
        raise UsageError(
            "the server is not installed: from the repository, pip install '.[server]'"
        )
    os.execv(sys.executable, [sys.executable, "-m", "embedsense.server", *server_args])


HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def cmd_health(args: argparse.Namespace) -> int:
    """The standard gRPC health check (for Docker's HEALTHCHECK) of each target on a channel
    of its own: a line each, 0 when every one is SERVING (one channel over several targets
    asks whichever answers, and a replica that is down goes unseen).

    Sent as raw bytes, so the light client needs no health-checking package: an empty
    HealthCheckRequest encodes as b"", the reply's status is field 1, a varint.
    """
    import grpc

    from embedsense.client._api import open_channel

    tls = tls_of(args)
    timeout = min(DEFAULT_TIMEOUT if args.timeout is None else args.timeout, 5.0)
    answers = []
    for target in args.target:
        with open_channel([target], tls, aio=False) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            try:
                reply = check(b"", timeout=timeout)
            except grpc.RpcError as err:
                answers.append({"target": target, "status": err.code().name})
                if not args.json:  # on stderr, as every error
                    fail(f"{target}: {err.code().name}", SERVER_ERROR)
                continue
        status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
        answers.append({"target": target, "status": str(HEALTH_STATUS.get(status, status))})
        if not args.json:
            print(f"{target}: {answers[-1]['status']}")
    if args.json:
        print(json.dumps(answers))
    return 0 if all(a["status"] == "SERVING" for a in answers) else SERVER_ERROR


def cmd_info(args: argparse.Namespace, client: Client) -> None:
    info = client.info()
    emit(args, asdict(info), table(list(asdict(info).items()), ["field", "value"]))


def cmd_embed(args: argparse.Namespace, client: Client) -> None:
    if args.texts == [STANDARD_INPUT]:
        args.texts = texts_from_standard_input()
    elif STANDARD_INPUT in args.texts:  # it would be embedded as the text "-"
        raise UsageError(
            "- reads the texts from standard input, one a line: give it alone, or the texts "
            "without it"
        )
    if args.layers is not None and not args.tokens:
        raise UsageError(
            "--layers applies to token vectors: add --tokens (sentence vectors are the mean of "
            "the last layer)"
        )
    if args.tokens:
        results = client.embed_tokens(args.texts, layers=args.layers, long_text=args.long_text)
        payload = [{"tokens": r.tokens.tokens, "offsets": r.tokens.offsets,
                    "vectors": r.vectors} for r in results]  # fmt: skip
        readable = "\n\n".join(
            f"{text}\n" + table(
                [(i, tok, f"{s}-{e}", f"{np.linalg.norm(v):.3f}", _preview(v))
                 for i, (tok, (s, e), v) in enumerate(
                     zip(r.tokens.tokens, r.tokens.offsets, r.vectors, strict=True))],
                ["#", "token", "chars", "norm", "vector"],
            )
            for text, r in zip(args.texts, results, strict=True)
        )  # fmt: skip
    else:
        vectors = client.encode(args.texts, long_text=args.long_text)
        payload = [{"text": t, "vector": v} for t, v in zip(args.texts, vectors, strict=True)]
        readable = table([(t, vectors.shape[1], _preview(v)) for t, v in zip(args.texts, vectors,
                                                                             strict=True)],
                         ["text", "dim", "vector"])  # fmt: skip
    emit(args, payload, readable)


def texts_from_standard_input() -> list[str]:
    """Standard input's texts, one a line (blank lines skipped), read as `index` reads a
    .txt file: a line that is not UTF-8 is `-:LINE: not UTF-8 (byte ...)`, from the bytes
    themselves. Split at newlines only: str.splitlines() would also split a text at
    U+2028, U+2029 or a carriage return alone."""
    documents = read_documents(STANDARD_INPUT, content=read_whole(STANDARD_INPUT))
    texts = [doc["text"] for doc in documents]
    if not texts:
        raise UsageError("-: no text on standard input (one text a line)")
    return texts


def _preview(vector: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:+.3f}" for x in vector[:4]) + ", ...]"


def index_stopped(
    err: EmbedSenseError, path: str, lines: int, done: int, part: int
) -> EmbedSenseError:
    """`err`, from the upsert of the part after the first `done` lines, told of the whole
    file: the SDK's account is of that one part, in ids a command line cannot see."""
    message = err.message.removesuffix(f" ({getattr(err, 'account', '')})")
    stored = done + len(err.stored_ids or ())
    return type(err)(
        err.code,
        f"{message}; {path}: {stored} of its {lines} documents are stored (the first {done}, "
        f"and {stored - done} of the {part} after them); indexing the file again stores "
        "nothing twice",
    )


def cmd_index(args: argparse.Namespace, client: Client) -> None:
    # A pipe gives its bytes once, and the file is read more than once: held whole (within
    # a limit), it is read as a file is.
    content = read_whole(args.file) if read_once(args.file) else None
    jsonl = is_json_lines(args.file, args.format)

    def documents(max_text_chars: int = 0) -> Iterator[dict[str, Any]]:
        return read_documents(args.file, max_text_chars, content, jsonl)

    # The whole file is checked before anything is sent: a bad line stops the command with
    # its file:line, and nothing of the file is half-stored.
    lines, longest = survey(documents())
    # The server's text limit, asked once the file is known to be sound; read again only to
    # name the first line over it.
    if longest > (limit := client.info().max_text_chars) > 0:
        for _ in documents(limit):
            pass
    _collection_for(args, client)
    sent, stored = upsert_in_parts(args, client, documents(), lines)
    if sent != lines:  # what was checked is not what was sent: never reported as done
        raise UsageError(
            f"{args.file}: changed while it was read ({lines} documents when checked, {sent} "
            f"when sent, {len(stored)} of them stored); index it again once it is written"
        )
    info = client.describe_collection(args.collection)
    # The count is of the ids the server acknowledged, not of what the check read.
    count = len(stored)
    readable = f"{count} documents stored in {info.name!r} ({info.count} in all, {info.index})"
    if sent > count:
        readable += f"; {sent - count} lines repeated an earlier line's id (the last one kept)"
    emit(args, {"upserted": count, "lines": sent, "collection": asdict(info)}, readable)


def survey(documents: Iterator[dict[str, Any]]) -> tuple[int, int]:
    """(documents, longest text in characters): every line read and checked."""
    count = longest = 0
    for doc in documents:
        count += 1
        longest = max(longest, len(doc["text"]))
    return count, longest


def upsert_in_parts(
    args: argparse.Namespace, client: Client, documents: Iterator[dict[str, Any]], lines: int
) -> tuple[int, set[str]]:
    """Store `documents` in parts of a few batches each (memory stays bounded; the client
    keeps an id's last line within a part, and parts go in order): how many were read, and
    the ids of those stored, as the upserts answered once the server had stored them."""
    part_size = args.batch_size * client.max_concurrent_batches
    sent, stored = 0, set[str]()
    with tqdm(total=lines, disable=args.json, unit="doc") as bar:
        for part in chunks(documents, part_size):
            try:
                stored.update(
                    client.upsert(
                        args.collection,
                        part,
                        batch_size=args.batch_size,
                        show_progress_bar=False,
                        timeout=args.timeout,
                    )
                )
            except EmbedSenseError as err:
                raise index_stopped(err, args.file, lines, sent, len(part)) from None
            except KeyboardInterrupt:  # what Ctrl-C left stored, and that a rerun is safe
                raise KeyboardInterrupt(
                    f"{args.file}: the first {sent} of its {lines} documents are stored, and "
                    f"maybe some of the {len(part)} after them; indexing the file again stores "
                    "nothing twice"
                ) from None
            sent += len(part)
            bar.update(len(part))
    return sent, stored


def _collection_for(args: argparse.Namespace, client: Client) -> None:
    """Create the collection, or check that the existing one is what the flags ask for: an
    index or token vectors it does not have are never ignored in silence."""
    try:
        info = client.describe_collection(args.collection)
    except NotFound:
        try:
            client.create_collection(
                args.collection, index=args.index or "Flat", store_tokens=args.store_tokens
            )
            return
        except AlreadyExists:  # made meanwhile by someone else: check it as any other
            info = client.describe_collection(args.collection)
    if args.index is not None and args.index != info.index:
        raise Conflict(
            f"collection {info.name!r} exists with index {info.index}, not {args.index}: omit "
            f"--index to add to it, or `embedsense drop {info.name}` first to rebuild it"
        )
    if args.store_tokens and not info.store_tokens:
        raise Conflict(
            f"collection {info.name!r} exists without token vectors: omit --store-tokens to "
            f"add to it, or `embedsense drop {info.name}` first to rebuild it"
        )


def cmd_drop(args: argparse.Namespace, client: Client) -> None:
    client.drop_collection(args.collection)
    emit(args, {"dropped": args.collection}, f"collection {args.collection!r} dropped")


def cmd_search(args: argparse.Namespace, client: Client) -> None:
    where = cli_data.filter_of(args.filter) if args.filter else None
    hits = client.search(
        args.collection, args.query, k=args.k, filter=where, score_threshold=args.score_threshold
    )
    readable = table([(i + 1, f"{h.score:.4f}", h.id, h.text[:60]) for i, h in enumerate(hits)],
                     ["rank", "score", "id", "text"])  # fmt: skip
    if not hits:  # a table's header alone says less
        bounds = []
        if where is not None:
            bounds.append("matching the filter")
        if args.score_threshold is not None:
            bounds.append(f"scoring at least {args.score_threshold}")
        readable = " ".join([f"no hits in {args.collection!r}", " and ".join(bounds)]).strip()
    emit(args, [asdict(h) for h in hits], readable)


def _senses(items: Sequence[str] | None) -> dict[str, list[str]]:
    """--sense LABEL=EXAMPLE flags as label -> examples."""
    senses: dict[str, list[str]] = {}
    for item in items or ():
        label, _, example = item.partition("=")
        if not example.strip():
            raise UsageError(f"--sense {item!r}: expected LABEL=EXAMPLE (an example text)")
        if not label.strip():
            raise UsageError(f"--sense {item!r}: expected LABEL=EXAMPLE (a sense needs a label)")
        senses.setdefault(label, []).append(example)
    return senses


def cmd_disambiguate(args: argparse.Namespace, client: Client) -> None:
    senses = _senses(args.sense)
    if senses and args.inventory:
        raise UsageError("--inventory and --sense: the senses come from one of them")
    if args.span is not None and args.occurrence is not None:
        raise UsageError("--span and --occurrence: each names the occurrence; give one")
    if not args.word and args.span is None:
        raise UsageError("disambiguate needs WORD or --span: which word to judge")
    result = client.disambiguate(args.text, args.word, senses or None, args.occurrence or 0,
                                 span=args.span, inventory=args.inventory, layers=args.layers,
                                 with_sentence=not args.word_only)  # fmt: skip
    judged = args.text[result.span[0] : result.span[1]]  # the word, or what --span names
    readable = (
        f"{args.text}\n{judged} -> {result.label}\n\n"
        + table(
            [(s.label, f"{s.probability:.1%}", f"{s.similarity:+.3f}") for s in result.scores],
            ["sense", "probability", "similarity"],
        )
        + "\n\nnearest examples:\n"
        + table(
            [(label, f"{cos:+.3f}", text) for label, text, cos in result.nearest],
            ["sense", "similarity", "example"],
        )
    )
    emit(args, asdict(result), readable)


def cmd_inventory(args: argparse.Namespace, client: Client) -> None:
    if args.file and args.action != "create":
        raise UsageError(f"inventory {args.action} takes no FILE: only create reads one")
    if args.action == "list":
        if args.name:
            raise UsageError("inventory list takes no NAME: it lists them all")
        inventories = client.list_inventories()
        rows = [(i.name, "yes" if i.builtin else "", f"{len(i.words)}: {_first_words(i.words)}")
                for i in inventories]  # fmt: skip
        emit(args, [asdict(i) for i in inventories], table(rows, ["name", "built in", "words"]))
    elif not args.name:
        raise UsageError(f"inventory {args.action} needs the inventory's NAME")
    elif args.action == "show":
        shown = client.get_inventory(args.name)
        rows = [(word, label, example.translate(ONE_LINE))
                for word, senses in sorted(shown.words.items())
                for label, examples in senses.items() for example in examples]  # fmt: skip
        emit(args, asdict(shown), table(rows, ["word", "sense", "example"]))
    elif args.action == "create":
        if not args.file:
            raise UsageError("inventory create NAME FILE: FILE is a JSON word -> sense -> examples")
        words = _read_json(args.file)
        try:
            made = client.create_inventory(args.name, words, replace=args.replace)
        except TypeError as err:  # the file's shape: the SDK names the part
            raise UsageError(f"{args.file}: {err}") from None
        emit(args, asdict(made), f"inventory {made.name!r}: {', '.join(sorted(made.words))}")
    else:
        client.delete_inventory(args.name)
        emit(args, {"deleted": args.name}, f"inventory {args.name!r} deleted")


def _first_words(words: Mapping[str, Any], columns: int = 60) -> str:
    """An inventory's words in order, as many as fit in about `columns` terminal columns (…
    for the rest): a table row, where an inventory may hold thousands of words."""
    shown = ""
    for word in sorted(words):
        more = f"{shown}, {word}" if shown else word
        if width(more) > columns:
            return f"{shown}, …" if shown else "…"
        shown = more
    return shown


def _read_json(path: str) -> Any:
    """A JSON file's value; `-`: standard input's. A key given twice in an object is
    refused: JSON keeps the last, and a sense's examples would be dropped without a word."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text("utf-8")
        return json.loads(text, object_pairs_hook=once_each)
    except KeyTwice as err:
        raise UsageError(f"{path}: {err}") from None
    except OSError as err:
        raise UsageError(f"{path}: {file_problem(err)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None


def _word_given(args: argparse.Namespace) -> None:
    """WORD, checked here as disambiguate checks it: not the server's "word: ..." (exit 1)."""
    if not args.word.strip():
        raise UsageError(f"{args.command} needs WORD: the word whose occurrences to read")


def cmd_occurrences(args: argparse.Namespace, client: Client) -> None:
    _word_given(args)
    found = client.search_occurrences(args.collection, args.text, args.word, k=args.k,
                                      occurrence=args.occurrence)  # fmt: skip
    rows = [(i + 1, f"{o.score:+.3f}", o.id, _mark(o.text, o.span)) for i, o in enumerate(found)]
    if not found.compared:
        shown = f"{args.word!r} does not occur in {args.collection!r}"
    else:
        shown = (f"best {len(found)} of {counted(found.compared, 'occurrence')} compared\n"
                 + table(rows, ["rank", "score", "id", "sentence"]))  # fmt: skip
    emit(args, [asdict(o) for o in found], shown)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cmd_induce(args: argparse.Namespace, client: Client) -> None:
    _word_given(args)
    if args.k is not None and args.max_k is not None:
        raise UsageError("-k and --max-k: -k names the senses' number, --max-k bounds its choice")
    induced = client.induce_senses(args.collection, args.word, k=args.k, max_k=args.max_k,
                                   central=args.central)  # fmt: skip
    senses = counted(len(induced.senses), "sense")
    blocks = [f"{counted(induced.occurrences, 'occurrence')} of {args.word!r}, {senses} "
              f"(silhouette {induced.silhouette:.3f})"]  # fmt: skip
    for n, sense in enumerate(induced.senses, 1):
        blocks.append(f"\nsense {n}: {counted(sense.size, 'occurrence')}\n" + table(
            [(f"{o.score:+.3f}", _mark(o.text, o.span)) for o in sense.central],
            ["centrality", "sentence"]))  # fmt: skip
    emit(args, asdict(induced), "\n".join(blocks))


def cmd_explain(args: argparse.Namespace, client: Client) -> None:
    if (args.compare or args.sense) and not args.word:
        raise UsageError("--compare and --sense need --word: the word to follow across texts")
    if (args.layer is not None or args.head is not None) and not (args.out or args.html):
        raise UsageError("--layer and --head choose what --out or --html draw: add one of them")
    if args.head is not None and args.layer is None and args.word and args.out and not args.html:
        # Without --layer the PNG draws --word's panels, where one head has no place.
        raise UsageError("--head with --word draws one head of --layer's map: add --layer")
    if args.truncate and args.long_text == "error":
        raise UsageError("--truncate and --long-text error: give one of them")
    if any(not text.strip() for text in args.compare or ()):
        raise UsageError("--compare: an empty text (another context of --word is needed)")
    senses_given = _senses(args.sense)
    long_text = "truncate" if args.truncate else args.long_text or "error"
    explanation, shape, fitted = _explain_what_fits(args, client, long_text)
    _check_drawable(args, explanation)
    contexts = {text: client.compare_layers(args.text, text, args.word, args.occurrence,
                                            long_text=long_text, role=args.role)
                for text in args.compare or ()}  # fmt: skip
    senses = {label: [client.compare_layers(args.text, example, args.word, args.occurrence,
                                            long_text=long_text, role=args.role)
                      for example in examples]
              for label, examples in senses_given.items()}  # fmt: skip
    from embedsense.client.attention_page import sense_profile

    profile = sense_profile(senses)
    # Every curve of the word's cosine per hidden state: each compared text, each sense.
    compared_as = {f"vs {i}": text for i, text in enumerate(contexts, 1)}  # their short names
    curves = {**{name: contexts[text].cosines for name, text in compared_as.items()},
              **{f"{label} (mean of {len(senses[label])})": cosines
                 for label, cosines in profile.items()}}  # fmt: skip
    written, left_out = [], []
    if args.out:
        from embedsense.client.render import render_png

        try:
            # The legend names the compared texts too.
            drawn = {f"{name}: {compared_as[name][:20]}" if name in compared_as else name:
                     cosines for name, cosines in curves.items()}  # fmt: skip
            png = render_png(explanation, args.out, layer=args.layer, head=args.head,
                             title=args.text, text=args.text, curves=drawn)  # fmt: skip
        except ModuleNotFoundError as err:  # render_png imports it when it draws
            if (err.name or "").partition(".")[0] != "matplotlib":
                raise
            needs = "PNG output needs matplotlib: pip install 'embedsense[plot]'"
            raise UsageError(needs) from None
        written.append(str(png))
    if args.html:
        from embedsense.client.attention_page import render

        # The contrast view: the same word's attention in each compared text, same layers.
        compared, left_out = _compared_explanations(args, client, explanation, long_text)
        render(explanation, args.html, contexts, profile, title=args.text,
               num_layers=shape[0], num_heads=shape[1], text=args.text, compared=compared,
               layer=args.layer, head=args.head, fitted=fitted)  # fmt: skip
        written.append(args.html)
    tokens = explanation.tokens.tokens
    names = token_names(tokens)
    rows = [(f.layer, "  ".join(f"{names[i]} {w:.2f}" for i, w in f.tokens[:4]))
            for f in explanation.focus if f.head is None]  # fmt: skip
    repeated = "\n#N: the token at position N, for one met more than once" * (names != tokens)
    readable = (
        table(rows, ["layer", f"{args.word} attends to (mean over heads)"]) + repeated
        if rows
        else (
            f"explained {len(tokens)} tokens ({' '.join(tokens)}) in {len(explanation.layers)} "
            f"layers x {len(explanation.heads)} heads; --word W shows what W attends to in each "
            "layer, --html FILE draws every map"
        )
    )
    if explanation.truncated_tokens:
        cut = explanation.truncated_tokens
        readable += (f"\n\ntruncated: the first {len(tokens)} of its {len(tokens) + cut:,} "
                     f"tokens are explained; the last {cut:,} are left out")  # fmt: skip
    if curves:
        rows = [(i, *(f"{c[i]:.3f}" for c in curves.values()))
                for i in range(len(next(iter(curves.values()))))]  # fmt: skip
        named = "".join(f"\n{name}: {text}" for name, text in compared_as.items())
        readable += (f"\n\n{args.word}'s cosine with its vector in each other text or sense\n"
                     + table(rows, ["hidden state", *curves]) + named)  # fmt: skip
    if written:
        readable += "\n\nwrote " + ", ".join(written)
    if left_out:
        readable += (
            f"\n\nthe contrast view leaves out {len(left_out)} compared text(s) too long for "
            f"{len(explanation.layers)} layers x {len(explanation.heads)} heads in one reply "
            "(their cosines per layer are on the page): " + ", ".join(map(repr, left_out))
        )
    comparisons = [{"text": text, **asdict(c)} for text, c in contexts.items()]
    payload = {"explanation": asdict(explanation), "comparisons": comparisons,
               # The first of comparisons, as it was before --compare repeated.
               "comparison": comparisons[0] if comparisons else None,
               "senses": profile, "written": written,
               "left_out_of_contrast": left_out}  # fmt: skip
    emit(args, payload, readable.strip())


def token_names(tokens: Sequence[str]) -> list[str]:
    """Each token as a table names it: a token met more than once with its position
    ("苹果#5"), so that two can be told apart."""
    counts = Counter(tokens)
    return [f"{t}#{i}" if counts[t] > 1 else t for i, t in enumerate(tokens)]


def _compared_explanations(
    args: argparse.Namespace, client: Client, explanation: Any, long_text: str
) -> tuple[dict[str, Any], list[str]]:
    """Each --compare text explained at the page's layers and heads; those too long for
    them in one reply are left out (the page's contrast view shows the others), not the
    whole command's failure."""
    from embedsense.client.errors import InvalidArgument

    compared, left_out = {}, []
    for text in args.compare or ():
        try:
            compared[text] = client.explain(text, args.word, explanation.layers,
                                            explanation.heads, long_text=long_text,
                                            role=args.role)  # fmt: skip
        except InvalidArgument as err:
            if "fewer layers or heads" not in str(err):
                raise
            left_out.append(text)
    return compared, left_out


def _check_drawable(args: argparse.Namespace, explanation: Any) -> None:
    """--layer and --head name a layer and a head the explanation has (before a traceback
    from the drawing, or a page that opens on nothing)."""
    try:
        explanation.check_view(args.layer, args.head)
    except ValueError as err:  # "layer 13: ..." names the flag's value: "--layer 13: ..."
        raise UsageError(f"--{err}") from None


def _explain_what_fits(
    args: argparse.Namespace, client: Client, long_text: str
) -> tuple[Any, tuple[int, int], bool]:
    """The explanation, the model's (layers, heads), and whether the layers and heads were
    chosen here: a text too long for every head of every layer gets the layers that fit
    (attention_page.fitting) instead of an error, unless --layers/--heads were given."""
    from embedsense.client.attention_page.fitting import fit
    from embedsense.client.errors import InvalidArgument

    def model_shape() -> tuple[int, int, int]:  # layers, heads, the response bound
        probe = client.explain(".", layers=[1])
        return client.info().num_layers, len(probe.heads), probe.max_attention_values

    ask = {"occurrence": args.occurrence, "long_text": long_text, "role": args.role,
           "neuron": _neuron_asked(args, client) if args.html and args.word else None}  # fmt: skip
    try:
        explanation = client.explain(args.text, args.word, args.layers, args.heads, **ask)
    except InvalidArgument as err:
        if ask["neuron"] is not None and "neuron." in str(err):
            # The neuron view is --layer/--head's: one the explanation lacks is a usage
            # error naming the flag, as for --out (not the server's "neuron.layer").
            without = {**ask, "neuron": None}
            with contextlib.suppress(InvalidArgument):  # else the server's error stands
                _check_drawable(
                    args, client.explain(args.text, args.word, args.layers, args.heads, **without)
                )
            raise
        if args.layers or args.heads or "fewer layers or heads" not in str(err):
            raise
        num_layers, num_heads, bound = model_shape()
        tokens = len(client.tokenize(args.text, args.role or "query").tokens)
        if long_text == "truncate":
            tokens = min(tokens, client.info().max_tokens)
        layers, heads = fit(tokens, num_layers, num_heads, bound)
        if args.layer is not None and args.layer not in layers:
            layers = sorted({*layers[1:], args.layer})
        return client.explain(args.text, args.word, layers, heads, **ask), (
            num_layers, num_heads), True  # fmt: skip
    if args.html and (args.layers or args.heads):
        num_layers, num_heads, _ = model_shape()
        return explanation, (num_layers, num_heads), False
    return explanation, (len(explanation.layers), len(explanation.heads)), False


def _neuron_asked(args: argparse.Namespace, client: Client) -> tuple[int, int]:
    """The head of the page's neuron view: the one it opens on (--layer/--head), else its
    default layer (the last asked for) and the first head asked for."""
    layer = args.layer
    if layer is None:
        layer = max(args.layers) if args.layers else client.info().num_layers
    head = args.head if args.head is not None else min(args.heads or [0])
    return layer, head


def _mark(text: str, span: tuple[int, int], around: int = MARKED_CONTEXT_CHARS) -> str:
    """The span in brackets with `around` characters each side (… where the text goes on),
    on one line: a table row, not a whole document."""
    start, end = span
    shown = (
        ("…" if start > around else "")
        + f"{text[max(0, start - around) : start]}[{text[start:end]}]{text[end : end + around]}"
        + ("…" if end + around < len(text) else "")
    )
    return shown.translate(ONE_LINE)


# ------------------------------------------------------------------ the parser


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="embedsense", description=__doc__.splitlines()[0], epilog=EXIT_STATUSES)
    default_target = with_port("127.0.0.1", os.environ.get("EMBEDSENSE_PORT"))
    p.add_argument(
        "--target",
        action="append",
        help="host:port of a server (a host alone: $EMBEDSENSE_PORT or 50051); repeat it or "
        "separate with commas for several (balanced round-robin); default "
        "$EMBEDSENSE_TARGET or " + default_target,
    )
    p.set_defaults(default_target=os.environ.get("EMBEDSENSE_TARGET") or default_target)
    p.add_argument(
        "--api-key",
        help="the server's API key (shows in `ps`: prefer "
        "--api-key-file); default $EMBEDSENSE_API_KEY",
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="a file whose first non-empty line is the API key; default $EMBEDSENSE_API_KEY_FILE",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        help=f"seconds per call (default {DEFAULT_TIMEOUT:g});"
        " for index, per batch (default: no limit)",
    )
    p.add_argument("--json", action="store_true", help="JSON output instead of a table")
    p.add_argument("--tls", action="store_true", help="connect over TLS (system CA roots)")
    p.add_argument("--tls-ca", help="PEM CA; default $EMBEDSENSE_TLS_CA")
    p.add_argument(
        "--tls-cert",
        help="PEM client certificate (mutual TLS); default $EMBEDSENSE_TLS_CLIENT_CERT",
    )
    p.add_argument(
        "--tls-key", help="PEM client key (mutual TLS); default $EMBEDSENSE_TLS_CLIENT_KEY"
    )
    sub = p.add_subparsers(dest="command", required=True)

    # Listed for --help only: main() hands `serve ...` to embedsense-server before parsing.
    sub.add_parser("serve", help="run embedsense-server (needs embedsense[server]); "
                   "`embedsense serve --help` lists its flags")  # fmt: skip

    sub.add_parser("info", help="the server's model, device and limits")
    sub.add_parser("health", help="the gRPC health check of each --target: exit 0 when all serve")
    cli_data.add_parsers(sub)  # collections ..., docs ...

    embed = sub.add_parser("embed", help="embed texts")
    embed.add_argument("texts", nargs="+", help="the texts; - reads them from standard input, "
                       "one a line")  # fmt: skip
    embed.add_argument("--tokens", action="store_true", help="per-token vectors")
    embed.add_argument(
        "--layers",
        type=int,
        nargs="*",
        help="with --tokens: hidden states to average, each once (0 = embeddings, -1 = last;"
        " default: the last); sentence vectors are always the last layer's",
    )
    embed.add_argument(
        "--long-text",
        choices=["error", "truncate", "windows"],
        default="error",
        help="a text over the model's length: refused (default), cut to its first window, or"
        " embedded window by window",
    )

    index = sub.add_parser(
        "index",
        help="store a .txt (a document per line) or .jsonl file",
        description="Store a file's documents in a collection, made if it does not exist. A "
        '.jsonl (or .ndjson) file holds one JSON object a line: {"text": ..., "id": ..., '
        '"metadata": {...}}, id and metadata optional; any other file holds one document a '
        "line (blank lines skipped). A document without an id gets one made from its text "
        "and metadata (32 hex digits, as the SDK and the server make it): indexing the same "
        "file again replaces its documents instead of storing them twice, and a line repeated "
        "in a file is stored once; the same text with other metadata is another document. "
        "The whole file is checked before anything is sent. A pipe (-, /dev/stdin, <(...), "
        f"a FIFO) is read once, into memory: up to {PIPED_LIMIT_BYTES >> 20} MiB; it has no "
        "suffix, so it holds one document a line unless --format jsonl says otherwise (as "
        "`embedsense docs export A | embedsense index - --format jsonl --collection B`).",
    )
    index.add_argument("file", help="the .txt or .jsonl file; - reads standard input")
    index.add_argument(
        "--format",
        choices=["text", "jsonl"],
        help="how the file is read: a document a line, or JSON lines (default: jsonl for a "
        "name ending in .jsonl or .ndjson, else text)",
    )
    index.add_argument("--collection", required=True)
    index.add_argument(
        "--index",
        help="FAISS spec of a new collection (default: Flat); for an "
        "existing one, it must be the collection's",
    )
    index.add_argument(
        "--store-tokens",
        action="store_true",
        help="keep token vectors too (for occurrences and induce)",
    )
    index.add_argument("--batch-size", type=at_least(1), default=256)

    drop = sub.add_parser("drop", help="delete a collection (as `collections drop`)")
    drop.add_argument("collection")

    search = sub.add_parser("search", help="nearest documents to a text")
    search.add_argument("collection")
    search.add_argument("query")
    search.add_argument("-k", type=at_least(1), default=10)
    search.add_argument("--filter", help='JSON, e.g. \'{"lang": "zh"}\'')
    search.add_argument(
        "--score-threshold",
        type=score_threshold,
        metavar="SCORE",
        help="only hits at least this near: score >= it (cosine, ip), squared distance <= it (l2)",
    )

    dis = sub.add_parser("disambiguate", help="which sense a word has in a text")
    dis.add_argument("text")
    dis.add_argument("word", nargs="?", default="", help="the word (or give --span)")
    dis.add_argument(
        "--occurrence",
        type=at_least(0),
        help="which appearance of the word (0 = the first, the default)",
    )
    dis.add_argument("--span", type=span_of, metavar="START:END",
                     help="the occurrence by its characters, START to END-1 (0-based)")  # fmt: skip
    dis.add_argument("--word-only", action="store_true",
                     help="compare the word's own vectors, without its sentence's (for a "
                     "sentence that uses the word in two senses)")  # fmt: skip
    dis.add_argument("--sense", action="append", metavar="LABEL=EXAMPLE",
                     help="an example per flag; without any, the inventory is used")  # fmt: skip
    dis.add_argument("--inventory", help="a stored inventory (default: 'default')")
    dis.add_argument("--layers", type=int, nargs="*",
                     help="hidden states to average, each once (0 = embeddings, -1 = the last; "
                     "default -1); explain's --layers count layers from 1")  # fmt: skip

    inv = sub.add_parser("inventory", help="sense inventories: list, show, create, delete")
    inv.add_argument("action", choices=["list", "show", "create", "delete"])
    inv.add_argument("name", nargs="?")
    inv.add_argument("file", nargs="?", help="for create: JSON word -> sense -> [examples] "
                     "(- reads standard input)")  # fmt: skip
    inv.add_argument("--replace", action="store_true")

    occ = sub.add_parser("occurrences", help="occurrences of a word used in the same sense")
    occ.add_argument("collection")
    occ.add_argument("text")
    occ.add_argument("word")
    occ.add_argument("-k", type=at_least(1), default=10)
    occ.add_argument(
        "--occurrence",
        type=at_least(0),
        default=0,
        help="which appearance of WORD in TEXT, 0-based (default: the first)",
    )

    ind = sub.add_parser("induce", help="the senses of a word in a collection, by clustering")
    ind.add_argument("collection")
    ind.add_argument("word")
    ind.add_argument("-k", type=at_least(1), help="how many senses (default: chosen by silhouette)")
    ind.add_argument(
        "--max-k",
        type=at_least(1),
        help=f"without -k: the most senses the silhouette chooses among (default {DEFAULT_MAX_K})",
    )
    ind.add_argument("--central", type=at_least(1), default=3,
                     help="the most central sentences shown per sense (default 3)")  # fmt: skip

    explain_layer = at_least(1, "explain's layers are 1-based (1 = the first)")
    explain_head = at_least(0, "heads are 0-based (0 = the first)")
    exp = sub.add_parser("explain", help="attention maps, as a table, a PNG and/or HTML")
    exp.add_argument("text")
    exp.add_argument("--word", default="", help="the word whose attention to follow")
    exp.add_argument(
        "--layers",
        type=explain_layer,
        nargs="*",
        help="1-based (default: all)",
    )
    exp.add_argument(
        "--heads",
        type=explain_head,
        nargs="*",
        help="0-based (default: all)",
    )
    exp.add_argument(
        "--occurrence",
        type=at_least(0),
        default=0,
        help="which appearance of --word to explain, 0-based (default: the first)",
    )
    exp.add_argument(
        "--layer",
        type=explain_layer,
        help="the PNG draws this layer's token-by-token map; --html opens on it",
    )
    exp.add_argument(
        "--head",
        type=explain_head,
        help="with --layer: the PNG draws one head instead of the mean; --html opens on it",
    )
    exp.add_argument("--compare", metavar="TEXT", action="append",
                     help="another context: the word's cosine per layer (repeatable)")  # fmt: skip
    exp.add_argument("--sense", action="append", metavar="LABEL=EXAMPLE",
                     help="an example of a sense: the sense view in --html")  # fmt: skip
    exp.add_argument(
        "--role",
        choices=["query", "passage"],
        help="read the texts as a query (default) or as a passage, as stored documents are",
    )
    exp.add_argument("--out", help="write a PNG (needs matplotlib)")
    exp.add_argument("--html", help="write a self-contained HTML page")
    exp.add_argument(
        "--long-text",
        choices=["error", "truncate"],
        help="a text over the model's length: refused (default), or explained in its first window",
    )
    exp.add_argument(
        "--truncate",
        action="store_true",
        help="the same as --long-text truncate: explain a long text's first window",
    )
    json_after_the_command(p)
    return p


def json_after_the_command(parser: argparse.ArgumentParser) -> None:
    """`--json` after the command as well (`embedsense search notes 水果 --json`), where
    people put it: it was "unrecognized arguments". Unset there, it leaves the first's."""
    for action in parser._actions:  # noqa: SLF001 - argparse lists its subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for command in set(action.choices.values()):
                if "--json" not in command._option_string_actions:  # noqa: SLF001
                    command.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                         help="JSON output instead of a table")  # fmt: skip
                json_after_the_command(command)


COMMANDS = {
    "info": cmd_info, **cli_data.COMMANDS, "embed": cmd_embed, "index": cmd_index,
    "drop": cmd_drop, "search": cmd_search, "disambiguate": cmd_disambiguate,
    "inventory": cmd_inventory, "occurrences": cmd_occurrences, "induce": cmd_induce,
    "explain": cmd_explain,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (EXIT_STATUSES). Errors are one line on stderr,
    `embedsense: error: ...`, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["serve"]:  # every flag after it is embedsense-server's, unread here
            return cmd_serve(argv[1:])
        args = parser().parse_args(argv)
        args.target = targets_of(args)
        if args.command == "health":
            return cmd_health(args)
        if args.command == "serve":  # `embedsense --json serve`: its flags are the server's
            raise UsageError("serve comes first: embedsense serve [the server's flags]")
        tls = tls_of(args)
        timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        with Client(args.target, api_key=api_key_of(args), timeout=timeout, tls=tls) as client:
            COMMANDS[args.command](args, client)
        sys.stdout.flush()  # here, where a reader gone away is seen (not at exit)
    except BrokenPipeError:  # `embedsense ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return SIGPIPE_STATUS
    except EmbedSenseError as err:
        message = in_cli_terms(str(err))
        if (
            isinstance(err, Unavailable)
            and not err.server_answered  # its Milvus could not be reached, say: not it
            and "connect" in err.message.lower()
        ):
            message += (
                f" (is a server running at {', '.join(args.target)}? --target or "
                "$EMBEDSENSE_TARGET names another)"
            )
        return fail(message.replace(" (gRPC: truncate=true)", ""), SERVER_ERROR)
    except Conflict as err:
        return fail(str(err), SERVER_ERROR)
    except OSError as err:  # a file named on the command line (an --html to write, a PEM)
        return fail(
            f"{err.filename}: {file_problem(err)}" if err.filename else str(err), USAGE_ERROR
        )
    except ValueError as err:  # UsageError, InputError, and the SDK's checks of arguments
        return fail(str(err), USAGE_ERROR)
    except KeyboardInterrupt as err:
        return fail("interrupted" + (f": {err}" if str(err) else ""), 130)
    return 0


def targets_of(args: argparse.Namespace) -> list[str]:
    """The servers to call, each with its port: --target's, else EMBEDSENSE_TARGET's, else
    127.0.0.1 on EMBEDSENSE_PORT. One no server can have is a bad command line, said of the
    flag or variable it came from (gRPC would dial another port, or fail at the call)."""
    port = os.environ.get("EMBEDSENSE_PORT")  # the server's, for a target without one
    if port and (why := port_problem(port)) is not None:
        raise UsageError(f"EMBEDSENSE_PORT {port!r}: {why}")
    if args.target:
        given, source = args.target, "--target"
    else:
        given = [args.default_target]
        source = "EMBEDSENSE_TARGET" if os.environ.get("EMBEDSENSE_TARGET") else "the default"
    targets = [t.strip() for item in given for t in item.split(",") if t.strip()]
    try:
        return [checked_target(target, port) for target in targets]
    except ValueError as err:
        raise UsageError(f"{source}: {err}") from None


def in_cli_terms(message: str) -> str:
    """A server's error with its hints naming the CLI's flags, not the SDK's arguments or
    the request's fields."""
    message = re.sub(r'long_text="(\w+)"', r"--long-text \1", message)
    message = message.replace("(replace it explicitly)", "(--replace replaces it)")
    return message.replace("a smaller page (limit)", "a smaller page (--batch-size)")


def fail(message: str, status: int) -> int:
    print(f"embedsense: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
