"""The README's Quick start runs as written: every fenced block after a `<!-- runnable -->`
line is executed, in the README's order, against one live server on 127.0.0.1 (the offline
default model, free ports, a temporary data directory), so an example that stops working
fails the suite.

How a block's text is adapted, and nothing else is: `127.0.0.1:50051` becomes the server's
gRPC address and `127.0.0.1:8080` its HTTP address; shell blocks also get EMBEDSENSE_TARGET
set to the gRPC address (the CLI's default, 127.0.0.1:50051, stands for it). The block after
`<!-- runnable: server -->` starts a server: its `embedsense-server` line is parsed by the
server's own argument parser instead of being run, since the test runs its own server.

The docs site includes the same Quick start from the README (docs/getting-started.md), so
this covers both."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ServerThread

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!-- runnable(?:: (\w+))? -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
GRPC_IN_TEXT, HTTP_IN_TEXT = "127.0.0.1:50051", "127.0.0.1:8080"
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence in the README
    language: str
    role: str  # "" for a block to run, "server" for the command that starts a server
    text: str


def runnable_blocks(markdown: str) -> list[Block]:
    """The fenced blocks that follow a runnable marker (blank lines between are allowed)."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        marker = MARKER.match(lines[i].strip())
        i += 1
        if not marker:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        opening = FENCE.match(lines[i]) if i < len(lines) else None
        if not opening:
            raise ValueError(f"README.md:{i}: a runnable marker must precede a fenced block")
        start = i
        end = next(j for j in range(start + 1, len(lines)) if lines[j].strip() == "```")
        text = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(start + 1, opening.group(1), marker.group(1) or "", text))
        i = end + 1
    return blocks


BLOCKS = runnable_blocks(README.read_text(encoding="utf-8"))
TO_RUN = [b for b in BLOCKS if not b.role]


@pytest.fixture(scope="module")
def live(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("quickstart"), http_port=0)
    yield server
    server.stop()


def adapted(text: str, server: ServerThread) -> str:
    return text.replace(GRPC_IN_TEXT, server.target).replace(
        HTTP_IN_TEXT, f"127.0.0.1:{server.server.http_port}"
    )


def test_the_readme_is_short_and_starts_with_a_runnable_quick_start():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, len(lines)
    assert "## Quick start" in lines[:60]
    languages = {b.language for b in TO_RUN}
    assert {"python", "sh"} <= languages, languages
    assert [b.role for b in BLOCKS if b.role] == ["server"]


@pytest.mark.parametrize("block", TO_RUN, ids=[f"line{b.line}-{b.language}" for b in TO_RUN])
def test_a_runnable_quick_start_block_runs(block: Block, live: ServerThread, tmp_path):
    text = adapted(block.text, live)
    env = {**os.environ, "EMBEDSENSE_TARGET": live.target}
    # The block's programs (embedsense, python) are this interpreter's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if block.language == "python":
        command = [sys.executable, "-c", text]
    elif block.language in ("sh", "bash"):
        command = ["bash", "-euo", "pipefail", "-c", text]
    else:
        pytest.fail(f"README.md:{block.line}: no way to run a {block.language!r} block")
    # Twice: a newcomer runs an example again (the second run found the first's collection).
    for run in ("first", "second"):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, cwd=tmp_path,
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"README.md:{block.line}: the block's {run} run failed (exit {done.returncode})\n"
            f"{text}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
        )
        printed = done.stdout.splitlines()
        for expected in promised_output(block.text):
            assert expected in printed, f"README.md:{block.line}: promises {expected!r}: {printed}"


def promised_output(text: str) -> list[str]:
    """What a block's comments say it prints: `print(...)  # fruit` promises a line `fruit`."""
    return [m.group(1) for m in re.finditer(r"^\s*print\(.*\)  # (.+)$", text, re.M)]


def test_the_server_command_of_the_quick_start_parses():
    from embedsense.server.cli import parser

    (block,) = [b for b in BLOCKS if b.role == "server"]
    commands = [line for line in block.text.splitlines() if line.startswith("embedsense-server")]
    assert len(commands) == 1, block.text
    args = parser().parse_args(shlex.split(commands[0])[1:])
    assert args.port == int(GRPC_IN_TEXT.rsplit(":", 1)[1])
    assert args.http_port == int(HTTP_IN_TEXT.rsplit(":", 1)[1])


# Phrases that describe how or when the code was written rather than what it does.
HISTORY = re.compile(
    r"this round|last round|earlier round|this session|last session|this machine|this host|not met"
    r"|lent to this task|\bno longer\b|\bnow\b",
    re.I,
)


def test_the_readme_and_docs_say_what_the_code_does_not_how_it_was_written():
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    found = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in pages
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "\n".join(found)
