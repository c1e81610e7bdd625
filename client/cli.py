"""`embedsense`: serve, and talk to a server from the shell.

    embedsense serve --data-dir ./data
    embedsense info
    embedsense index corpus.txt --collection notes
    embedsense search notes "苹果手机" -k 5
    embedsense embed "我喜欢吃苹果" --tokens
    embedsense disambiguate "我买了最新的苹果手机" 苹果
    embedsense occurrences notes "我喜欢吃苹果" 苹果
    embedsense induce notes 苹果
    embedsense explain "我喜欢吃苹果" --word 苹果 --compare "我买了最新的苹果手机" --out a.png

Output is a readable table, or JSON with --json. The target and the API key come from
--target / --api-key or EMBEDSENSE_TARGET / EMBEDSENSE_API_KEY; several servers as
--target a:50051 --target b:50051, or a comma-separated list.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from embedsense.client import TLS, Client, EmbedSenseError, NotFound


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell (CJK characters count double)."""

    def width(text: str) -> int:
        return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)

    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c + " " * (w - width(c)) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tls_of(args: argparse.Namespace) -> TLS | None:
    """The channel's TLS from --tls / --tls-ca / --tls-cert / --tls-key (None: plaintext).
    Any one of them turns TLS on: a client certificate is never dropped in silence."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit(
            "--tls-cert and --tls-key go together (the client certificate and its key)"
        )
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    return TLS(args.tls_ca, args.tls_cert, args.tls_key)


def emit(args: argparse.Namespace, payload: Any, readable: str) -> None:
    print(json.dumps(payload, ensure_ascii=False, default=_jsonable) if args.json else readable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def read_documents(path: Path) -> Iterator[dict[str, Any]]:
    """A .jsonl file: one object per line ({"text": ..., "id"?, "metadata"?}); any other
    file: one document per non-empty line."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise SystemExit(f"{path}:{number}: not JSON: {err.msg}") from None
            else:
                yield {"text": line.rstrip("\n")}


# ------------------------------------------------------------------ commands


def cmd_serve(server_args: list[str]) -> int:
    """Run the server's own program (`python -m embedsense.server`) in this process's place:
    the client imports nothing of the server, which needs the `server` extra."""
    if importlib.util.find_spec("embedsense.server") is None:
        raise SystemExit("the server is not installed: pip install 'embedsense[server]'")
    os.execv(sys.executable, [sys.executable, "-m", "embedsense.server", *server_args])


HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def cmd_health(args: argparse.Namespace) -> int:
    """The standard gRPC health check (for Docker's HEALTHCHECK): 0 when SERVING.

    Sent as raw bytes, so the light client needs no health-checking package: an empty
    HealthCheckRequest encodes as b"", the reply's status is field 1, a varint.
    """
    import grpc

    from embedsense.client._api import open_channel

    tls = tls_of(args)
    with open_channel(args.target, tls, aio=False) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = check(b"", timeout=min(args.timeout, 5.0))
        except grpc.RpcError as err:
            print(f"{','.join(args.target)}: {err.code().name}", file=sys.stderr)
            return 1
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    print(f"{','.join(args.target)}: {HEALTH_STATUS.get(status, status)}")
    return 0 if status == 1 else 1


def cmd_info(args: argparse.Namespace, client: Client) -> None:
    info = client.info()
    emit(args, asdict(info), table(list(asdict(info).items()), ["field", "value"]))


def cmd_collections(args: argparse.Namespace, client: Client) -> None:
    infos = client.list_collections()
    rows = [(c.name, c.count, c.index, c.metric, "yes" if c.store_tokens else "") for c in infos]
    emit(args, [asdict(c) for c in infos],
         table(rows, ["collection", "documents", "index", "metric", "tokens"]))  # fmt: skip


def cmd_embed(args: argparse.Namespace, client: Client) -> None:
    if args.tokens:
        results = client.embed_tokens(args.texts, layers=args.layers)
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
        vectors = client.encode(args.texts)
        payload = [{"text": t, "vector": v} for t, v in zip(args.texts, vectors, strict=True)]
        readable = table([(t, vectors.shape[1], _preview(v)) for t, v in zip(args.texts, vectors,
                                                                             strict=True)],
                         ["text", "dim", "vector"])  # fmt: skip
    emit(args, payload, readable)


def _preview(vector: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:+.3f}" for x in vector[:4]) + ", ...]"


def cmd_index(args: argparse.Namespace, client: Client) -> None:
    try:
        client.describe_collection(args.collection)
    except NotFound:
        client.create_collection(args.collection, index=args.index, store_tokens=args.store_tokens)
    ids = client.upsert(args.collection, read_documents(args.file), batch_size=args.batch_size,
                        show_progress_bar=not args.json)  # fmt: skip
    info = client.describe_collection(args.collection)
    readable = f"{len(ids)} documents stored in {info.name!r} ({info.count} in all, {info.index})"
    emit(args, {"upserted": len(ids), "collection": asdict(info)}, readable)


def cmd_search(args: argparse.Namespace, client: Client) -> None:
    where = json.loads(args.filter) if args.filter else None
    hits = client.search(args.collection, args.query, k=args.k, filter=where)
    emit(args, [asdict(h) for h in hits],
         table([(i + 1, f"{h.score:.4f}", h.id, h.text[:60]) for i, h in enumerate(hits)],
               ["rank", "score", "id", "text"]))  # fmt: skip


def _senses(items: Sequence[str] | None) -> dict[str, list[str]]:
    """--sense LABEL=EXAMPLE flags as label -> examples."""
    senses: dict[str, list[str]] = {}
    for item in items or ():
        label, _, example = item.partition("=")
        if not example:
            raise SystemExit(f"--sense {item!r}: expected LABEL=EXAMPLE")
        senses.setdefault(label, []).append(example)
    return senses


def cmd_disambiguate(args: argparse.Namespace, client: Client) -> None:
    senses = _senses(args.sense)
    result = client.disambiguate(args.text, args.word, senses or None, args.occurrence,
                                 inventory=args.inventory, layers=args.layers)  # fmt: skip
    readable = (
        f"{args.text}\n{args.word} -> {result.label}\n\n"
        + table([(s.label, f"{s.probability:.1%}", f"{s.similarity:+.3f}") for s in result.scores],
                ["sense", "probability", "similarity"])
        + "\n\nnearest examples:\n"
        + table([(label, f"{cos:+.3f}", text) for label, text, cos in result.nearest],
                ["sense", "similarity", "example"])
    )  # fmt: skip
    emit(args, asdict(result), readable)


def cmd_inventory(args: argparse.Namespace, client: Client) -> None:
    if args.action == "list":
        inventories = client.list_inventories()
        rows = [(i.name, "yes" if i.builtin else "", ", ".join(sorted(i.words)))
                for i in inventories]  # fmt: skip
        emit(args, [asdict(i) for i in inventories], table(rows, ["name", "built in", "words"]))
    elif args.action == "create":
        if not args.file:
            raise SystemExit("inventory create NAME FILE: FILE is a JSON word -> sense -> examples")
        words = json.loads(Path(args.file).read_text(encoding="utf-8"))
        made = client.create_inventory(args.name, words, replace=args.replace)
        emit(args, asdict(made), f"inventory {made.name!r}: {', '.join(sorted(made.words))}")
    else:
        client.delete_inventory(args.name)
        emit(args, {"deleted": args.name}, f"inventory {args.name!r} deleted")


def cmd_occurrences(args: argparse.Namespace, client: Client) -> None:
    found = client.search_occurrences(args.collection, args.text, args.word, k=args.k)
    rows = [(i + 1, f"{o.score:+.3f}", o.id, _mark(o.text, o.span)) for i, o in enumerate(found)]
    emit(args, [asdict(o) for o in found], table(rows, ["rank", "score", "id", "sentence"]))


def cmd_induce(args: argparse.Namespace, client: Client) -> None:
    induced = client.induce_senses(args.collection, args.word, k=args.k)
    blocks = [f"{induced.occurrences} occurrences of {args.word!r}, {len(induced.senses)} senses "
              f"(silhouette {induced.silhouette:.3f})"]  # fmt: skip
    for n, sense in enumerate(induced.senses, 1):
        blocks.append(f"\nsense {n}: {sense.size} occurrences\n" + table(
            [(f"{o.score:+.3f}", _mark(o.text, o.span)) for o in sense.central],
            ["centrality", "sentence"]))  # fmt: skip
    emit(args, asdict(induced), "\n".join(blocks))


def cmd_explain(args: argparse.Namespace, client: Client) -> None:
    explanation = client.explain(args.text, args.word, layers=args.layers, heads=args.heads)
    if (args.compare or args.sense) and not args.word:
        raise SystemExit("--compare and --sense need --word: the word to follow across texts")
    contexts = {text: client.compare_layers(args.text, text, args.word)
                for text in args.compare or ()}  # fmt: skip
    comparison = next(iter(contexts.values()), None)
    senses = {label: [client.compare_layers(args.text, example, args.word) for example in examples]
              for label, examples in _senses(args.sense).items()}  # fmt: skip
    written = []
    if args.out:
        try:
            from embedsense.client.render import render_png
        except ImportError:  # pragma: no cover - depends on the install
            raise SystemExit(
                "PNG output needs matplotlib: pip install 'embedsense[plot]'"
            ) from None
        written.append(str(render_png(explanation, args.out, comparison, args.layer, args.head,
                                      title=args.text)))  # fmt: skip
    if args.html:
        from embedsense.client.attention_page import sense_profile

        explanation.to_html(args.html, contexts, sense_profile(senses), title=args.text,
                            num_layers=client.info().num_layers)  # fmt: skip
        written.append(args.html)
    tokens = explanation.tokens.tokens
    rows = [(f.layer, "  ".join(f"{tokens[i]} {w:.2f}" for i, w in f.tokens[:4]))
            for f in explanation.focus if f.head is None]  # fmt: skip
    readable = table(rows, ["layer", f"{args.word} attends to (mean over heads)"]) if rows else ""
    if comparison:
        readable += "\n\n" + table([(i, f"{c:.3f}") for i, c in enumerate(comparison.cosines)],
                                    ["hidden state", "cosine across the two texts"])  # fmt: skip
    if written:
        readable += "\n\nwrote " + ", ".join(written)
    payload = {"explanation": asdict(explanation), "comparison": asdict(comparison)
               if comparison else None, "written": written}  # fmt: skip
    emit(args, payload, readable.strip())


def _mark(text: str, span: tuple[int, int]) -> str:
    start, end = span
    return f"{text[:start]}[{text[start:end]}]{text[end:]}"


# ------------------------------------------------------------------ the parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedsense", description=__doc__.splitlines()[0])
    default_target = f"127.0.0.1:{os.environ.get('EMBEDSENSE_PORT') or 50051}"
    p.add_argument(
        "--target",
        action="append",
        help="host:port of a server; repeat it or separate with commas for several "
        "(balanced round-robin); default $EMBEDSENSE_TARGET or " + default_target,
    )
    p.set_defaults(default_target=os.environ.get("EMBEDSENSE_TARGET") or default_target)
    p.add_argument("--api-key", default=os.environ.get("EMBEDSENSE_API_KEY"))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="JSON output instead of a table")
    p.add_argument("--tls", action="store_true", help="connect over TLS (system CA roots)")
    p.add_argument("--tls-ca", default=os.environ.get("EMBEDSENSE_TLS_CA"), help="PEM CA")
    p.add_argument("--tls-cert", default=os.environ.get("EMBEDSENSE_TLS_CLIENT_CERT"),
                   help="PEM client certificate (mutual TLS)")  # fmt: skip
    p.add_argument("--tls-key", default=os.environ.get("EMBEDSENSE_TLS_CLIENT_KEY"),
                   help="PEM client key (mutual TLS)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    # Listed for --help only: main() hands `serve ...` to embedsense-server before parsing.
    sub.add_parser("serve", help="run embedsense-server (needs embedsense[server]); "
                   "`embedsense serve --help` lists its flags")  # fmt: skip

    sub.add_parser("info", help="the server's model, device and limits")
    sub.add_parser("health", help="the gRPC health check: exit 0 when serving")
    sub.add_parser("collections", help="the collections and their sizes")

    embed = sub.add_parser("embed", help="embed texts")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--tokens", action="store_true", help="per-token vectors")
    embed.add_argument("--layers", type=int, nargs="*", help="hidden states to average")

    index = sub.add_parser("index", help="store a .txt (a document per line) or .jsonl file")
    index.add_argument("file", type=Path)
    index.add_argument("--collection", required=True)
    index.add_argument("--index", default="Flat", help="FAISS spec, for a new collection")
    index.add_argument("--store-tokens", action="store_true")
    index.add_argument("--batch-size", type=int, default=256)

    search = sub.add_parser("search", help="nearest documents to a text")
    search.add_argument("collection")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--filter", help='JSON, e.g. \'{"lang": "zh"}\'')

    dis = sub.add_parser("disambiguate", help="which sense a word has in a text")
    dis.add_argument("text")
    dis.add_argument("word")
    dis.add_argument("--occurrence", type=int, default=0)
    dis.add_argument("--sense", action="append", metavar="LABEL=EXAMPLE",
                     help="an example per flag; without any, the inventory is used")  # fmt: skip
    dis.add_argument("--inventory", help="a stored inventory (default: 'default')")
    dis.add_argument("--layers", type=int, nargs="*")

    inv = sub.add_parser("inventory", help="sense inventories: list, create, delete")
    inv.add_argument("action", choices=["list", "create", "delete"])
    inv.add_argument("name", nargs="?")
    inv.add_argument("file", nargs="?", help="for create: JSON word -> sense -> [examples]")
    inv.add_argument("--replace", action="store_true")

    occ = sub.add_parser("occurrences", help="occurrences of a word used in the same sense")
    occ.add_argument("collection")
    occ.add_argument("text")
    occ.add_argument("word")
    occ.add_argument("-k", type=int, default=10)

    ind = sub.add_parser("induce", help="the senses of a word in a collection, by clustering")
    ind.add_argument("collection")
    ind.add_argument("word")
    ind.add_argument("-k", type=int, help="how many senses (default: chosen by silhouette)")

    exp = sub.add_parser("explain", help="attention maps, as a table, a PNG and/or HTML")
    exp.add_argument("text")
    exp.add_argument("--word", default="", help="the word whose attention to follow")
    exp.add_argument("--layers", type=int, nargs="*", help="1-based (default: all)")
    exp.add_argument("--heads", type=int, nargs="*", help="0-based (default: all)")
    exp.add_argument("--layer", type=int, help="draw this layer's token-by-token map")
    exp.add_argument("--head", type=int, help="with --layer: one head instead of the mean")
    exp.add_argument("--compare", metavar="TEXT", action="append",
                     help="another context: the word's cosine per layer (repeatable)")  # fmt: skip
    exp.add_argument("--sense", action="append", metavar="LABEL=EXAMPLE",
                     help="an example of a sense: the sense view in --html")  # fmt: skip
    exp.add_argument("--out", help="write a PNG (needs matplotlib)")
    exp.add_argument("--html", help="write a self-contained HTML page")
    return p


COMMANDS = {
    "info": cmd_info, "collections": cmd_collections, "embed": cmd_embed, "index": cmd_index,
    "search": cmd_search, "disambiguate": cmd_disambiguate, "inventory": cmd_inventory,
    "occurrences": cmd_occurrences, "induce": cmd_induce, "explain": cmd_explain,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # every flag after it is embedsense-server's, unread here
        return cmd_serve(argv[1:])
    args = parser().parse_args(argv)
    given = args.target or [args.default_target]
    args.target = [t.strip() for item in given for t in item.split(",") if t.strip()]
    if args.command == "health":
        return cmd_health(args)
    try:
        tls = tls_of(args)
        with Client(args.target, api_key=args.api_key, timeout=args.timeout, tls=tls) as client:
            COMMANDS[args.command](args, client)
    except EmbedSenseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
