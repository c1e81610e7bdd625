"""MkDocs hook: the parts of the docs that the code already states, generated at build time so
that they cannot go stale.

- `<!-- cli-help: embedsense -->` and `<!-- cli-help: embedsense-server -->` in a page become
  the parsers' own `--help` (client/cli.py, server/cli.py), one block per subcommand.
- `<!-- grpc-rpcs -->` becomes a table of the service's RPCs with their comments, read from
  proto/embedsense/v1/embedsense.proto.
- The pictures in client/data/*.png are served under img/, where the pages link them.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "embedsense" / "v1" / "embedsense.proto"
PICTURES = ROOT / "client" / "data"
HELP_WIDTH = "100"  # argparse wraps at $COLUMNS: a fixed width makes every build the same


@contextmanager
def neutral_environment() -> Iterator[None]:
    """Help texts print defaults read from EMBEDSENSE_* variables and wrap to the terminal:
    build them as on a machine with none set and a 100-column terminal."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("EMBEDSENSE_")]:
        del os.environ[name]
    os.environ["COLUMNS"] = HELP_WIDTH
    os.environ["NO_COLOR"] = "1"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name, in the order they were added."""
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def fenced(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```\n"


def client_help() -> str:
    from embedsense.client.cli import parser

    with neutral_environment():
        top = parser()
        parts = ["### `embedsense`\n", fenced(top.format_help())]
        for name, sub in subcommands(top).items():
            if name == "serve":  # runs embedsense-server: its flags are in the next section
                continue
            parts += command_help(f"embedsense {name}", sub)
    return "\n".join(parts)


def command_help(command: str, sub: argparse.ArgumentParser) -> list[str]:
    """A command's help, then its own subcommands' (`embedsense docs export`), depth first."""
    parts = [f"### `{command}`\n", fenced(sub.format_help())]
    for name, nested in subcommands(sub).items():
        parts += command_help(f"{command} {name}", nested)
    return parts


def server_help() -> str:
    from embedsense.server.cli import parser

    with neutral_environment():
        return fenced(parser().format_help())


HELP = {"embedsense": client_help, "embedsense-server": server_help}


def grpc_rpcs() -> str:
    """The service block of the .proto as a table: each RPC, its request and reply, and the
    comment lines just above it (a comment heading a group applies to the RPCs under it)."""
    service = re.search(r"service EmbedSense \{(.*?)\n\}", PROTO.read_text("utf-8"), re.S)
    if service is None:
        raise ValueError(f"{PROTO}: no `service EmbedSense` block")
    rows, comment = [], []
    for line in service.group(1).splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
        elif match := re.match(r"rpc (\w+)\((stream )?(\w+)\) returns \((stream )?(\w+)\);", line):
            name, stream_in, request, stream_out, reply = match.groups()
            request = f"stream {request}" if stream_in else request
            reply = f"stream {reply}" if stream_out else reply
            text = " ".join(comment).replace("|", "\\|")
            rows.append(f"| `{name}` | `{request}` | `{reply}` | {text} |")
            comment = []
        elif not line:
            comment = []
    if not rows:
        raise ValueError(f"{PROTO}: no rpc lines in the service block")
    head = "| RPC | request | reply | what it does |\n| --- | --- | --- | --- |\n"
    return head + "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def cli(match: re.Match[str]) -> str:
        program = match.group(1)
        if program not in HELP:
            raise ValueError(f"{page.file.src_uri}: no CLI named {program!r}")
        return HELP[program]()

    markdown = re.sub(r"<!-- cli-help: ([\w-]+) -->", cli, markdown)
    return markdown.replace("<!-- grpc-rpcs -->", grpc_rpcs())


def on_files(files: Files, config: Any) -> Files:
    for picture in sorted(PICTURES.glob("*.png")):
        files.append(File.generated(config, f"img/{picture.name}", abs_src_path=str(picture)))
    return files
