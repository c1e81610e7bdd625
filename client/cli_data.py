"""The CLI's collection and document commands: `embedsense collections ...` and
`embedsense docs ...`.

    embedsense collections                      # list (as before)
    embedsense collections create news --index HNSW32
    embedsense collections describe news
    embedsense collections drop news            # `embedsense drop news` still works
    embedsense docs get news ID [ID...] [--vectors]
    embedsense docs count news --filter '{"lang": "zh"}'
    embedsense docs delete news --filter '{"year": {"$lt": 2020}}'   # or IDs
    embedsense docs update news ID [ID...] --patch '{"reviewed": true}' [--replace]
    embedsense docs export news --out news.jsonl [--filter ...]

`docs export` writes the JSONL that `embedsense index` reads ({"id", "text", "metadata"} a
line, in id order): export, then index into another collection, gives the same documents.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, NoReturn

from embedsense.client import Client
from embedsense.client import _api as api
from embedsense.client._api import Call
from embedsense.proto import MAX_SCROLL_PAGE
from embedsense.proto.values import KeyTwice, once_each

EXPORT_BATCH = 1000  # documents per scroll page of an export


class _Base:
    """cli.py's helpers (UsageError, table, emit, at_least, cmd_drop), looked up when a
    command runs: cli.py imports this module, so importing it back here at import time
    would be circular (and under `python -m embedsense.client.cli` it is __main__)."""

    def __getattr__(self, name: str) -> Any:
        from embedsense.client import cli

        return getattr(cli, name)


base = _Base()


def filter_of(raw: str | None) -> dict[str, Any] | None:
    """--filter's JSON object, or None without one; a UsageError saying what is expected."""
    return None if raw is None else json_object("--filter", raw, """'{"lang": "zh"}'""")


def _not_json(constant: str) -> NoReturn:
    # Python's json reads these; JSON has no such numbers, and no server stores them.
    raise ValueError(f"{constant} is not a JSON number")


def json_object(flag: str, raw: str, example: str) -> dict[str, Any]:
    """The JSON object an option was given; a UsageError saying what is expected."""
    try:
        value = json.loads(raw, parse_constant=_not_json, object_pairs_hook=once_each)
    except KeyTwice as err:
        raise base.UsageError(f"{flag} {raw!r}: {err}") from None
    except ValueError as err:  # JSONDecodeError's msg, or _not_json's
        raise base.UsageError(
            f"{flag} {raw!r}: not JSON ({getattr(err, 'msg', err)}); expected a JSON object, "
            f"e.g. {example}"
        ) from None
    if not isinstance(value, dict):
        raise base.UsageError(f"{flag} {raw!r}: expected a JSON object, e.g. {example}")
    return value


# ------------------------------------------------------------------ collections


def _collection_rows(infos: list[Any]) -> str:
    rows = [(c.name, c.count, c.index, c.metric, "yes" if c.store_tokens else "") for c in infos]
    return base.table(rows, ["collection", "documents", "index", "metric", "tokens"])


def cmd_collections(args: argparse.Namespace, client: Client) -> None:
    action = args.action or "list"
    if action == "list":
        infos = client.list_collections()
        base.emit(args, [asdict(c) for c in infos], _collection_rows(infos))
    elif action == "create":
        info = client.create_collection(
            args.collection,
            index=args.index,
            store_tokens=args.store_tokens,
            metric=args.metric,
            ef_search=args.ef_search,
            nprobe=args.nprobe,
            dim=args.dim,
            exist_ok=args.exist_ok,
        )
        base.emit(
            args,
            asdict(info),
            f"collection {info.name!r} {'ready' if args.exist_ok else 'created'} ({info.index}, "
            f"{info.metric}, {info.dim}-dim {info.model}, {info.count} documents)",
        )
    elif action == "describe":
        info = client.describe_collection(args.collection)
        base.emit(args, asdict(info), base.table(list(asdict(info).items()), ["field", "value"]))
    else:  # drop
        base.cmd_drop(args, client)


# ------------------------------------------------------------------ documents


def cmd_docs(args: argparse.Namespace, client: Client) -> None:
    DOCS[args.action](args, client)


def _docs_get(args: argparse.Namespace, client: Client) -> None:
    if not args.ids:
        raise base.UsageError("docs get COLLECTION ID [ID ...]: at least one id")
    found = client.get(args.collection, args.ids, with_vectors=args.vectors)
    missing = [i for i, d in zip(args.ids, found, strict=True) if d is None]
    docs = [asdict(d) for d in found if d is not None]
    if not args.vectors:
        for doc in docs:
            doc.pop("vector")
    rows = [
        (d["id"], json.dumps(d["metadata"], ensure_ascii=False)[:40], d["text"][:60]) for d in docs
    ]
    readable = base.table(rows, ["id", "metadata", "text"])
    if missing:
        readable += f"\nnot stored: {', '.join(missing)}"
    base.emit(args, {"documents": docs, "missing": missing}, readable)


def _docs_delete(args: argparse.Namespace, client: Client) -> None:
    where = filter_of(args.filter)
    if bool(args.ids) == (where is not None):
        raise base.UsageError("docs delete COLLECTION: give IDs or --filter (one of them)")
    deleted = client.delete(args.collection, args.ids or None, filter=where)
    base.emit(args, {"deleted": deleted}, f"{deleted} documents deleted from {args.collection!r}")


def _docs_update(args: argparse.Namespace, client: Client) -> None:
    patch = json_object("--patch", args.patch, """'{"reviewed": true}'""")
    mode = "replace" if args.replace else "merge"
    updated = client.update_metadata(args.collection, args.ids, patch, mode)
    named = len(set(args.ids))
    base.emit(
        args,
        {"updated": updated},
        f"{updated} of {named} documents updated in {args.collection!r}"
        + ("" if updated == named else " (the others are not stored)"),
    )


def _docs_count(args: argparse.Namespace, client: Client) -> None:
    count = client.count(args.collection, filter=filter_of(args.filter))
    base.emit(args, {"count": count}, str(count))


def export_pages(
    client: Client, name: str, where: dict[str, Any] | None, batch_size: int
) -> Iterator[list[Any]]:
    """The scroll's pages as the wire has them: an export writes each document's metadata
    JSON as the server sent it, without decoding and encoding it again."""
    cursor = ""
    while True:
        call = api.scroll_call(name, where, batch_size, cursor, False)
        reply = client._call(Call(call.rpc, call.request, lambda r: r))
        yield list(reply.documents)
        if not (cursor := reply.next_cursor):
            return


def export_lines(pages: Iterable[list[Any]], out: IO[str]) -> int:
    """Documents as `embedsense index`'s JSONL (document_files.py): one object a line with
    id, text and metadata; how many were written."""
    written = 0
    for page in pages:
        out.write("".join(
            f'{{"id": {json.dumps(d.id, ensure_ascii=False)}, '
            f'"text": {json.dumps(d.text, ensure_ascii=False)}, '
            f'"metadata": {d.metadata_json or "{}"}}}\n'
            for d in page
        ))  # fmt: skip
        written += len(page)
    return written


def _docs_export(args: argparse.Namespace, client: Client) -> None:
    pages = export_pages(client, args.collection, filter_of(args.filter), args.batch_size)
    if not args.out:  # on stdout, the lines are the output
        export_lines(pages, sys.stdout)
        return
    # Into a file beside --out, renamed over it once complete: a failed export leaves an
    # existing file as it was, and no half export that looks whole.
    out = Path(args.out)
    if not out.parent.is_dir():  # named as given, not as the file made beside it
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), args.out)
    if out.is_dir():  # found before the export: the rename over it would fail after it
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), args.out)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", delete=False
    ) as part:
        try:
            written = export_lines(pages, part)
        except BaseException:
            Path(part.name).unlink()
            raise
    umask = os.umask(0)  # the mode a file opened for writing gets (the temporary one: 0600)
    os.umask(umask)
    try:
        os.chmod(part.name, 0o666 & ~umask)
        os.replace(part.name, out)
    except OSError as err:  # named as given, and no hidden file left beside it
        Path(part.name).unlink()
        raise OSError(err.errno, err.strerror, args.out) from None
    base.emit(
        args,
        {"exported": written, "file": args.out},
        f"{written} documents of {args.collection!r} written to {args.out}",
    )


DOCS: dict[str, Callable[[argparse.Namespace, Client], None]] = {
    "get": _docs_get,
    "delete": _docs_delete,
    "count": _docs_count,
    "update": _docs_update,
    "export": _docs_export,
}


# ------------------------------------------------------------------ the parser


def add_parsers(sub: Any) -> None:
    """`collections` and `docs`, on the CLI's subparsers."""
    col = sub.add_parser(
        "collections", help="collections: list (the default), create, describe, drop"
    )
    actions = col.add_subparsers(dest="action", required=False)
    actions.add_parser("list", help="the collections and their sizes")
    create = actions.add_parser("create", help="a new collection")
    create.add_argument("collection")
    create.add_argument("--index", default="Flat", help="FAISS spec (default: Flat)")
    create.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine")
    create.add_argument(
        "--store-tokens",
        action="store_true",
        help="keep token vectors too (for occurrences and induce)",
    )
    create.add_argument("--ef-search", type=base.at_least(0), default=0)
    create.add_argument("--nprobe", type=base.at_least(0), default=0)
    create.add_argument(
        "--dim",
        type=base.at_least(1),
        default=0,
        help="for vectors embedded elsewhere: their dimension (default: the served model's)",
    )
    create.add_argument(
        "--exist-ok",
        action="store_true",
        help="one of that name made with these settings (flags left out at their defaults) is "
        "no error; other settings still are",
    )
    for name, text in (
        ("describe", "a collection's settings and size"),
        ("drop", "delete a collection and everything in it"),
    ):
        actions.add_parser(name, help=text).add_argument("collection")

    docs = sub.add_parser("docs", help="documents: get, delete, count, update, export")
    what = docs.add_subparsers(dest="action", required=True)
    get = what.add_parser("get", help="documents by id")
    get.add_argument("collection")
    get.add_argument("ids", nargs="+", metavar="ID")
    get.add_argument("--vectors", action="store_true", help="with their vectors (JSON)")
    delete = what.add_parser("delete", help="documents by id, or every one matching --filter")
    delete.add_argument("collection")
    delete.add_argument("ids", nargs="*", metavar="ID")
    count = what.add_parser("count", help="documents (matching --filter)")
    count.add_argument("collection")
    update = what.add_parser(
        "update",
        help="documents' metadata, by id (their texts and vectors stay)",
        description="Merge --patch into the documents' metadata (its top-level keys set; "
        "a null value stored as null), or with --replace make it their whole metadata. "
        "Texts and vectors are not touched, nothing is embedded again. Prints how many of "
        "the ids are stored.",
    )
    update.add_argument("collection")
    update.add_argument("ids", nargs="+", metavar="ID")
    update.add_argument("--patch", required=True, help="a JSON object, e.g. '{\"reviewed\": true}'")
    update.add_argument(
        "--replace", action="store_true", help="the patch becomes the whole metadata"
    )
    export = what.add_parser(
        "export",
        help="documents as JSONL that `embedsense index` reads back",
        description="Write the documents (matching --filter) as JSON lines, {id, text, "
        "metadata}, in id order: the file `embedsense index FILE.jsonl` reads. Documents "
        "written or deleted during the export may or may not be in it; none is written twice.",
    )
    export.add_argument("collection")
    export.add_argument("--out", help="the .jsonl file to write (default: stdout)")
    export.add_argument(
        "--batch-size",
        type=base.at_least(1, maximum=MAX_SCROLL_PAGE),
        default=EXPORT_BATCH,
        help=f"documents per request (default {EXPORT_BATCH}, at most {MAX_SCROLL_PAGE})",
    )
    for parser in (delete, count, export):
        parser.add_argument("--filter", help='JSON, e.g. \'{"lang": "zh"}\'')


COMMANDS = {"collections": cmd_collections, "docs": cmd_docs}
