"""The command lines at their edges (issue 23): bad input files, user errors, options that
must not be ignored, content-derived ids, text access logs, API key files, the server's
--help, a failed start's data dir, and the demo's log file.

Most commands run in this process through `main(argv)`, against the session's server;
the one that used to hang runs as a subprocess, with a deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerThread

from embedsense.client import Client, NotFound, Retry, Unavailable

CLI = [sys.executable, "-m", "embedsense.client.cli"]


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch):
    for name in ("EMBEDSENSE_API_KEY", "EMBEDSENSE_API_KEY_FILE", "EMBEDSENSE_TARGET"):
        monkeypatch.delenv(name, raising=False)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`embedsense ARGV` in this process: (exit status, stdout, stderr)."""
    from embedsense.client.cli import main

    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse, and anything else that exits
        status = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    """The only line of stderr that is not a progress bar; it must be the CLI's error."""
    lines = [line for line in err.splitlines() if line.strip() and "doc/s" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("embedsense: error: "), err
    assert "Traceback" not in err
    return lines[0]


def drop(server, name: str) -> None:
    with Client(server.target) as c:
        try:
            c.drop_collection(name)
        except NotFound:
            pass


# ------------------------------------------------------------------ 1, 2: input files


def test_index_of_a_jsonl_with_a_malformed_line_names_file_and_line(server, tmp_path):
    """It used to hang forever: SystemExit raised in gRPC's request-iterating thread."""
    (tmp_path / "bad.jsonl").write_text('{"text":"a"}\nnot json\n', encoding="utf-8")
    try:
        done = subprocess.run(
            [*CLI, "--target", server.target, "index", "bad.jsonl", "--collection", "bad-json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert one_error_line(done.stderr).startswith("embedsense: error: bad.jsonl:2: not JSON")
        with Client(server.target) as c:  # checked before anything is sent
            assert "bad-json" not in [info.name for info in c.list_collections()]
    finally:
        drop(server, "bad-json")


def test_index_of_a_missing_file_or_an_unknown_field_says_why(
    server, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    base = ["--target", server.target, "index"]
    status, _, err = cli(capsys, *base, "missing.txt", "--collection", "unknown-field")
    assert status == 2
    assert "missing.txt" in one_error_line(err) and "no such file" in err

    Path("unk.jsonl").write_text('{"text": "a"}\n\n{"text": "b", "foo": 1}\n', encoding="utf-8")
    status, _, err = cli(capsys, *base, "unk.jsonl", "--collection", "unknown-field")
    assert status == 2
    line = one_error_line(err)
    assert "unk.jsonl:3: unknown field 'foo'" in line and "text, id, metadata" in line

    Path("latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    status, _, err = cli(capsys, *base, "latin1.txt", "--collection", "unknown-field")
    assert status == 2 and "latin1.txt:2: not UTF-8" in one_error_line(err)
    assert "Exception iterating" not in err
    drop(server, "unknown-field")


def test_json_lines_are_read_as_documents_whatever_the_suffixs_case_or_spelling(tmp_path):
    """data.JSONL and data.ndjson were read as text files: each raw JSON line was stored as
    one document's text."""
    from embedsense.client.document_files import read_documents

    for name in ("data.JSONL", "data.ndjson", "data.Jsonl"):
        path = tmp_path / name
        path.write_text('{"text": "苹果", "metadata": {"k": 1}}\n', encoding="utf-8")
        [doc] = read_documents(str(path))
        assert doc["text"] == "苹果" and doc["metadata"] == {"k": 1}, name


def test_read_documents_checks_every_field():
    from embedsense.client.document_files import InputError, parse_jsonl_line

    assert parse_jsonl_line('{"text": "a", "id": 7, "metadata": {"k": 1}}', "f", 1) == {
        "text": "a",
        "id": "7",
        "metadata": {"k": 1},
    }
    for line, message in [
        ("[1]", "f:4: expected a JSON object"),
        ('{"id": "x"}', 'f:4: no "text"'),
        ('{"text": 3}', 'f:4: "text" must be a non-empty string'),
        ('{"text": "a", "metadata": []}', 'f:4: "metadata" must be a JSON object'),
        ('{"text": "a", "id": true}', 'f:4: "id" must be a string or an integer'),
        # What the server refuses, found before anything is sent (they failed mid-stream,
        # after the batches before them were stored).
        ('{"text": " "}', 'f:4: "text" must be a non-empty string'),
        ('{"text": "a\\u0001b"}', "f:4: control character U+0001 at position 1"),
        ('{"text": "a", "metadata": {"s": NaN}}', "f:4: metadata.s: nan is not a JSON number"),
        ('{"text": "a", "metadata": {"n": [1e999]}}', "f:4: metadata.n[0]: inf is not"),
        ('{"text": "a", "metadata": {"n": 99999999999999999999}}', "f:4: metadata.n: 9999"),
        ('{"text": "a", "metadata": {"s": "x\\u0000"}}', "f:4: metadata.s: U+0000 (NUL)"),
        ('{"text": "a", "id": "x\\u0000"}', 'f:4: "id": U+0000 (NUL)'),
        ('{"text": "a", "id": "' + "x" * 300 + '"}', 'f:4: "id": a document id is a string'),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            parse_jsonl_line(line, "f", 4)


# ------------------------------------------------------------------ 3, 4: one-line errors


def test_user_errors_are_one_line_and_exit_2_server_errors_exit_1(server, tmp_path, capsys):
    target = ["--target", server.target]
    status, _, err = cli(capsys, *target, "search", "c", "水果", "--filter", "notjson")
    assert status == 2 and "--filter" in one_error_line(err) and "not JSON" in err
    status, _, err = cli(capsys, *target, "search", "c", "水果", "--filter", "[1]")
    assert status == 2 and "JSON object" in one_error_line(err)
    # Python's json reads NaN and Infinity, which JSON has not: they were sent, and the
    # server's refusal exited 1 as a server error.
    for bad in ('{"score": NaN}', '{"score": {"$lt": Infinity}}', '{"s": -Infinity}'):
        status, _, err = cli(capsys, *target, "search", "c", "水果", "--filter", bad)
        assert status == 2 and "not JSON" in one_error_line(err), err
        status, _, err = cli(capsys, *target, "docs", "update", "c", "a", "--patch", bad)
        assert status == 2 and "--patch" in one_error_line(err) and "not JSON" in err, err
    # A key twice: JSON keeps the last, so {"$gt": 1, "$gt": 0} filtered on $gt 0 unsaid.
    twice = '{"year": {"$gt": 2020, "$gt": 0}}'
    status, _, err = cli(capsys, *target, "search", "c", "水果", "--filter", twice)
    assert status == 2 and "'$gt' twice" in one_error_line(err), err
    status, _, err = cli(capsys, *target, "docs", "update", "c", "a", "--patch", '{"a":1,"a":2}')
    assert status == 2 and "--patch" in one_error_line(err) and "'a' twice" in err, err

    status, _, err = cli(
        capsys, *target, "explain", "我喜欢吃苹果", "--word", "苹果", "--layers", "-1"
    )
    assert status == 2 and "1-based" in one_error_line(err)
    status, _, err = cli(capsys, *target, "explain", "我喜欢吃苹果", "--heads", "-1")
    assert status == 2 and "0-based" in one_error_line(err)
    # In range for the wire, out of range for the model: the server's own words.
    status, _, err = cli(capsys, *target, "explain", "我喜欢吃苹果", "--layers", "99")
    assert status == 1 and "layer 99 does not exist" in one_error_line(err)

    status, _, err = cli(
        capsys, *target, "inventory", "create", "mine", str(tmp_path / "none.json")
    )
    assert status == 2 and "none.json" in one_error_line(err)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    status, _, err = cli(capsys, *target, "inventory", "create", "mine", str(tmp_path / "bad.json"))
    assert status == 2 and "bad.json" in one_error_line(err) and "not JSON" in err

    for shape in ('[1]', '{"小米": ["小米粥"]}', '{"小米": {"a": [1], "b": ["小米"]}}',
                  '{"小米": {"grain": "小米粥很香", "phone": "小米手机"}}'):  # fmt: skip
        # They were tracebacks, or a str of examples sent as its characters, one each.
        (tmp_path / "shape.json").write_text(shape, encoding="utf-8")
        path = str(tmp_path / "shape.json")
        status, _, err = cli(capsys, *target, "inventory", "create", "mine", path)
        assert status == 2 and "shape.json" in one_error_line(err), err

    # Values no call can take were sent, to come back as a server error (exit 1), or, a
    # timeout of 0, as DEADLINE_EXCEEDED on every call.
    for command in (["search", "c", "水果", "-k", "0"], ["occurrences", "c", "苹果", "苹果", "-k",
                    "0"], ["--timeout", "0", "info"], ["--timeout", "-1", "info"],
                    ["--timeout", "nan", "info"]):  # fmt: skip
        status, _, err = cli(capsys, *target, *command)
        line = one_error_line(err)
        assert status == 2 and ("-k" in line or "--timeout" in line), line
    # Past what the wire's integers carry: protobuf's "Value out of range: ..." named none.
    wire = "out of the range its field can carry (0 to 4,294,967,295)"
    for command, field in ((["search", "c", "水果", "-k", "1000000000000"], "k=1000000000000"),
                           (["explain", "我喜欢吃苹果", "--word", "苹果", "--occurrence",
                             "99999999999"], "occurrence=99999999999"),
                           (["collections", "create", "big", "--dim", "99999999999"],
                            "dim=99999999999")):  # fmt: skip
        status, _, err = cli(capsys, *target, *command)
        line = one_error_line(err)
        assert status == 2 and f"{field}: {wire}" in line, line
    with Client(server.target) as client:
        with pytest.raises(ValueError, match=r"^k: the most answers to return, at least 1"):
            client.search("c", "水果", k=-1)  # not the wire's range, which starts at 0
        with pytest.raises(ValueError, match=r"^layers=\[-1\]: out of the range"):
            client.explain("我喜欢吃苹果", "苹果", layers=[-1])
        with pytest.raises(TypeError, match=r"^k='3': expected an integer, got a str"):
            client.search("c", "水果", k="3")
        # Protobuf's "bad argument type for built-in operation" said nothing of what to send.
        with pytest.raises(TypeError, match=r"^word=5: expected a string, got an int"):
            client.disambiguate("喝小米粥", 5)
        with pytest.raises(TypeError, match=r"got a list holding a bool$"):  # not an int
            client.explain("我喜欢吃苹果", "苹果", layers=[1, True])
        # No UTF-8 holds a lone surrogate: it was a bare UnicodeEncodeError.
        surrogate = re.escape("lone surrogate U+D800 at position 1; no UTF-8 holds it")
        with pytest.raises(ValueError, match=rf"^texts\[1\]: {surrogate}"):
            client.encode(["好", "a\ud800b"])
        with pytest.raises(ValueError, match=rf"^text: {surrogate}"):
            client.search("c", "a\ud800b")
        for document, field in (
            ("a\ud800b", "text"),
            ({"id": "x\ud800y", "text": "好"}, "id"),
            ({"text": "好", "metadata": {"k": "a\ud800b"}}, r"metadata\.k"),
        ):
            with pytest.raises(ValueError, match=rf"^documents\[1\]: {field}: .*U\+D800"):
                client.upsert("c", ["好", document])
        # Count, delete, get and metadata updates said only "'utf-8' codec can't encode";
        # a filter or patch is named as the caller wrote it, and the place in it.
        for call, field in (
            (lambda: client.count("c", filter={"k": "\ud800"}), r"filter\.k"),
            (lambda: client.delete("c", filter={"k": "\ud800"}), r"filter\.k"),
            (
                lambda: client.search("c", "好", filter={"k": {"$in": ["\ud800"]}}),
                r"filter\.k\.\$in\[0\]",
            ),  # fmt: skip
            (lambda: client.update_metadata("c", ["a"], {"k": "\ud800"}), r"patch\.k"),
            (lambda: client.get("c", ["a\ud800"]), r"ids\[0\]"),
            (lambda: client.delete("c", ["a\ud800"]), r"ids\[0\]"),
            (lambda: client.delete("c\ud800", []), "name"),
            (lambda: client.describe_collection("c\ud800"), "name"),
        ):
            with pytest.raises(ValueError, match=rf"^{field}: .*U\+D800"):
                call()
    # A scroll's page is 1 to 10,000 documents: the server said "limit: 10001", a name the
    # caller never used, and the CLI exited 1 (a server's refusal) for its own flag.
    with Client(server.target) as client, pytest.raises(ValueError, match=r"^batch_size=10001"):
        next(client.scroll("c", batch_size=10_001))
    status, _, err = cli(capsys, *target, "docs", "export", "c", "--batch-size", "10001")
    line = one_error_line(err)
    assert status == 2 and "--batch-size" in line and "10000" in line, line
    for command in (["docs", "count", "c", "--filter", '{"k": "\\ud800"}'],
                    ["docs", "update", "c", "a", "--patch", '{"k": "\\ud800"}']):  # fmt: skip
        status, _, err = cli(capsys, *target, *command)
        line = one_error_line(err)
        assert status == 2 and ".k: U+D800 (a lone surrogate" in line, line
    status, _, err = cli(capsys, *target, "search", "no-such-collection", "x")
    assert status == 1 and "NOT_FOUND" in one_error_line(err)
    status, _, err = cli(capsys, "--target", "nohost,alsono", "info")
    assert status == 2 and "nohost" in one_error_line(err)
    for empty in ("", ",", " "):  # "mix of IPv4 and IPv6 addresses", of none
        status, _, err = cli(capsys, "--target", empty, "info")
        assert status == 2 and 'expected a "host:port"' in one_error_line(err), err
    for targets in ([], "", ["127.0.0.1:1", ""]):
        with pytest.raises(ValueError, match='expected a "host:port"'):
            Client(targets)
    with pytest.raises(ValueError, match="at least 1"):  # every call failed, unsent
        Retry(attempts=0)
    for backoff in (-1, float("nan"), float("inf")):  # time.sleep's ValueError at the 1st retry
        with pytest.raises(ValueError, match="initial_backoff"):
            Retry(initial_backoff=backoff)

    status, out, _ = cli(capsys, "--help")
    assert status == 0 and "exit status" in out.lower()


def test_json_writes_a_float32_in_its_own_shortest_digits(server, capsys):
    """As HTTP writes them. Before: as float64's repr, 0.029173726215958595 for 0.029173726,
    40 % more text for no more precision."""
    status, out, _ = cli(capsys, "--target", server.target, "--json", "embed", "苹果")
    assert status == 0
    written = json.loads(out)
    vector = np.asarray(written[0]["vector"])
    with Client(server.target) as c:
        np.testing.assert_array_equal(vector.astype(np.float32), c.encode(["苹果"])[0])
    digits = [
        len(n.lstrip("-").replace("0.", "", 1).lstrip("0")) for n in re.findall(r"-?\d\.\d+", out)
    ]
    assert digits and max(digits) <= 9, max(digits)  # float32 needs at most 9 significant


def test_embed_layers_need_tokens_and_bad_layers_get_the_servers_error(server, capsys):
    target = ["--target", server.target]
    status, out, err = cli(capsys, *target, "embed", "苹果", "--layers", "99")
    assert status == 2 and "add --tokens" in one_error_line(err) and not out
    status, _, err = cli(capsys, *target, "embed", "苹果", "--tokens", "--layers", "99")
    assert status == 1 and "layer 99 does not exist" in one_error_line(err)
    status, out, _ = cli(capsys, *target, "embed", "苹果", "--tokens", "--layers", "-1", "6")
    assert status == 0 and "苹果" in out
    status, out, _ = cli(capsys, *target, "embed", "--help")
    layers_help = out.split("\n  --layers", 1)[1].split("\n  --", 1)[0]
    assert "--tokens" in layers_help


def test_the_servers_hints_name_the_clis_flags():
    """An export too large for one reply said to ask for "a smaller page (limit)": the
    request's field, where the CLI's flag is --batch-size."""
    from embedsense.client.cli import in_cli_terms

    page = "RESOURCE_EXHAUSTED: the reply would be 70 MB: ask for a smaller page (limit)"
    assert in_cli_terms(page).endswith("a smaller page (--batch-size)")
    text = 'INVALID_ARGUMENT: text 0 is 600 tokens; or send long_text="truncate"'
    assert in_cli_terms(text).endswith("or send --long-text truncate")


def test_the_long_text_hint_names_an_option_that_exists_and_it_works(server, capsys):
    """The error for a long text once said `pass truncate=True`: no such flag in the CLI, no
    such argument in Client.encode; then long_text="truncate", the SDK's spelling. The CLI
    names its own flag, and it works."""
    target = ["--target", server.target]
    long_text = "苹果手机和苹果派。" * 200
    explain = ["explain", long_text, "--word", "苹果", "--layers", "12", "--heads", "0"]
    for command in (["embed", long_text], explain):
        status, _, err = cli(capsys, *target, *command)
        line = one_error_line(err)
        assert status == 1 and "--long-text truncate" in line and "truncate=True" not in line
        assert "long_text=" not in line  # the SDK's spelling: the CLI's flag is --long-text
        status, out, err = cli(capsys, *target, "--json", *command, "--long-text", "truncate")
        assert status == 0, err
        assert json.loads(out)
    status, out, err = cli(capsys, *target, "--json", "embed", long_text, "--long-text", "windows")
    assert status == 0 and len(json.loads(out)) == 1, err


def test_explain_says_what_it_explained_and_refuses_a_layer_it_cannot_draw(
    server, capsys, tmp_path
):
    """Without --word, explain printed an empty line; --layer 13 of a 12-layer model was a
    traceback with --out (`13 is not in list`), and --layer/--head without --out or --html
    were ignored without a word."""
    target = ["--target", server.target]
    status, out, err = cli(capsys, *target, "explain", "我喜欢吃苹果")
    assert status == 0 and "--word" in out and "12 layers" in out, (out, err)
    assert "吃" in out  # the tokens it explained
    png = str(tmp_path / "a.png")
    for flags in (["--layer", "13", "--out", png], ["--layer", "0", "--html", png + ".html"],
                  ["--layer", "3", "--head", "12", "--out", png],
                  # The page's neuron view asked the server for them: its error, exit 1.
                  ["--layer", "13", "--html", png + ".html"], ["--head", "12", "--html",
                   png + ".html"]):  # fmt: skip
        status, out, err = cli(capsys, *target, "explain", "我喜欢吃苹果", "--word", "苹果", *flags)
        line = one_error_line(err)
        assert status == 2 and ("--layer" in line or "--head" in line) and not out, line
    status, out, err = cli(capsys, *target, "explain", "我喜欢吃苹果", "--layer", "3")
    assert status == 2 and "--out or --html" in one_error_line(err)
    status, out, err = cli(
        capsys, *target, "explain", "我喜欢吃苹果", "--layer", "12", "--out", png
    )
    assert status == 0 and Path(png).stat().st_size > 0, err


def test_what_a_newcomer_met_first_is_one_line_and_the_right_status(
    server, capsys, tmp_path, monkeypatch
):
    """Each was a traceback, a misleading error or a lost file: a key in EMBEDSENSE_API_KEY
    with the newline a secret file ends with ("INTERNAL: Invalid metadata"); `docs export
    --out FILE` that failed (FILE emptied before the first page came); `embedsense --json
    serve` (KeyError: 'serve'); `explain --out x.png` without matplotlib."""
    target = ["--target", server.target]
    monkeypatch.setenv("EMBEDSENSE_API_KEY", "a-key\n")
    assert cli(capsys, *target, "info")[0] == 0
    with pytest.raises(ValueError, match="api_key"):
        Client(server.target, api_key="a-key\n")
    monkeypatch.delenv("EMBEDSENSE_API_KEY")
    kept = tmp_path / "kept.jsonl"
    kept.write_text('{"text": "mine"}\n', encoding="utf-8")
    status, _, err = cli(capsys, *target, "docs", "export", "no-such", "--out", str(kept))
    assert status == 1 and "NOT_FOUND" in one_error_line(err)
    assert kept.read_text(encoding="utf-8") == '{"text": "mine"}\n'
    assert list(tmp_path.iterdir()) == [kept]  # and nothing half-written beside it
    status, _, err = cli(capsys, *target, "--json", "serve")
    assert status == 2 and "serve" in one_error_line(err)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "a.png"
    status, _, err = cli(capsys, *target, "explain", "我喜欢吃苹果", "--out", str(png))
    assert status == 2 and "needs matplotlib" in one_error_line(err) and not png.exists()


def test_json_after_the_command_is_the_same_as_before_it(server, capsys):
    """`embedsense info --json`, where people type it, was "unrecognized arguments"."""
    target = ["--target", server.target]
    status, out, _ = cli(capsys, *target, "info", "--json")
    assert status == 0 and json.loads(out)["dim"] == 384
    status, out, _ = cli(capsys, *target, "collections", "list", "--json")
    assert status == 0 and isinstance(json.loads(out), list)
    status, out, _ = cli(capsys, *target, "info")
    assert status == 0 and not out.lstrip().startswith("{")  # a table without it


def test_an_inventory_file_with_a_key_twice_is_refused_before_anything_is_sent(capsys, tmp_path):
    """JSON keeps the last of a key given twice: the first sense's examples were dropped
    without a word (or "at least two senses are needed, got 1" for a file showing two)."""
    path = tmp_path / "senses.json"
    path.write_text('{"银行": {"a": ["我在银行工作"], "b": ["银行利率上调了"],\n'
                    '          "a": ["这条河的银行很陡"]}}', encoding="utf-8")  # fmt: skip
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "inventory", "create", "dup",
                         str(path))  # fmt: skip
    line = one_error_line(err)
    assert status == 2 and f"{path}: 'a' twice in one object" in line, line


def test_a_jsonl_line_with_a_key_twice_is_refused_before_anything_is_sent(capsys, tmp_path):
    """The server refuses the same metadata_json; the file's line was taken, its last value
    kept."""
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "苹果"}\n{"text": "香蕉", "metadata": {"a": 1, "a": 2}}\n',
                    encoding="utf-8")  # fmt: skip
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "index", str(path),
                         "--collection", "dup")  # fmt: skip
    line = one_error_line(err)
    assert status == 2 and f"{path.name}:2: 'a' twice in one object" in line, line


def test_no_server_at_the_target_says_where_it_looked_and_how_to_name_another(capsys):
    """The first command of a newcomer without a server: gRPC's "failed to connect to all
    addresses", with no word of the flag that points the CLI elsewhere."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    status, _, err = cli(capsys, "--target", down, "--timeout", "5", "info")
    line = one_error_line(err)
    assert status == 1 and "UNAVAILABLE" in line, line
    assert f"is a server running at {down}? --target or $EMBEDSENSE_TARGET" in line, line
    with Client(down, timeout=5, retry=Retry(attempts=1)) as c:
        with pytest.raises(Unavailable) as failed:
            c.info()
    assert not failed.value.server_answered  # no server said it: none was reached


def test_a_target_without_a_port_means_the_servers_default_port(server, capsys, monkeypatch):
    """Client("localhost") and --target localhost dialled port 443, gRPC's default for a
    name without one, where no embedsense server listens. The CLI's is $EMBEDSENSE_PORT, as
    for its default target; the SDK's is 50051 (the session server's here: the test cannot
    take 50051)."""
    import embedsense.client.targets as targets

    monkeypatch.delenv("EMBEDSENSE_PORT", raising=False)
    monkeypatch.setattr(targets, "DEFAULT_PORT", server.port)
    with Client("127.0.0.1", timeout=30) as c:
        assert c.info().dim == 384
    with Client(["127.0.0.1", server.target], timeout=30) as c:  # a list of them too
        assert c.info().dim == 384
    status, out, _ = cli(capsys, "--target", "127.0.0.1", "--json", "info")
    assert status == 0 and json.loads(out)["dim"] == 384

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
    monkeypatch.setenv("EMBEDSENSE_PORT", str(down))  # the CLI's, before the SDK's
    status, _, err = cli(capsys, "--target", "127.0.0.1", "--timeout", "5", "info")
    assert f"is a server running at 127.0.0.1:{down}?" in one_error_line(err), err


def test_index_interrupted_says_what_is_stored_and_that_a_rerun_is_safe(
    server, tmp_path, capsys, monkeypatch
):
    """Ctrl-C during `index` said "interrupted" and nothing of the lines already stored."""
    path = tmp_path / "news.txt"
    path.write_text("".join(f"第{i}条新闻\n" for i in range(12)), encoding="utf-8")
    real, parts = Client.upsert, []

    def upsert(self, name, documents, **kwargs):
        parts.append(len(documents))
        if len(parts) == 2:
            raise KeyboardInterrupt
        return real(self, name, documents, **kwargs)

    monkeypatch.setattr(Client, "upsert", upsert)
    try:
        status, _, err = cli(capsys, "--target", server.target, "index", str(path),
                             "--collection", "interrupted", "--batch-size", "2")  # fmt: skip
        line = one_error_line(err)
        done = parts[0]
        assert status == 130 and line.startswith("embedsense: error: interrupted: "), line
        assert f"the first {done} of its 12 documents are stored" in line, line
        assert "indexing the file again stores nothing twice" in line, line
        with Client(server.target) as c:
            assert c.count("interrupted") == done
    finally:
        drop(server, "interrupted")


def test_output_cut_short_by_its_reader_ends_quietly(server):
    """`embedsense info | head -1`: Python's own "Exception ignored ... BrokenPipeError"
    and exit status 120 (or, once main saw it, a usage error, exit 2)."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written
    try:
        done = subprocess.run([*CLI, "--target", server.target, "info"], stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_index_of_a_text_over_the_servers_limit_stops_before_anything_is_sent(
    server, tmp_path, capsys
):
    """The file's check did not know the server's max_text_chars: the lines before the
    long one were stored, and the error named its place in a request, not its line."""
    path = tmp_path / "long.txt"
    path.write_text("一\n二\n三\n" + "长" * 100_001 + "\n五\n", encoding="utf-8")
    status, _, err = cli(capsys, "--target", server.target, "index", str(path),
                         "--collection", "too-long", "--batch-size", "2")  # fmt: skip
    line = one_error_line(err)
    assert status == 2 and f"{path}:4: " in line, line
    assert "100001 characters" in line and "max_text_chars" in line, line
    with Client(server.target) as c:
        assert "too-long" not in [info.name for info in c.list_collections()]


def test_index_stopped_by_the_server_says_which_lines_are_stored(
    server, tmp_path, capsys, monkeypatch
):
    """The file goes in parts of a few batches; a part the server refused reported only its
    own count ("0 of 8 documents were stored"), and an SDK error's stored_ids, not the
    lines of the earlier parts that were stored."""
    path = tmp_path / "news.jsonl"
    lines = [{"text": f"第{i}条新闻"} for i in range(12)]
    lines[9] = {"text": "长" * 100_001}  # over max_text_chars: the second part is refused
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    real_info = Client.info  # a server that does not say its limit: only it refuses the text
    monkeypatch.setattr(
        Client, "info", lambda c: dataclasses.replace(real_info(c), max_text_chars=0)
    )
    try:
        status, _, err = cli(capsys, "--target", server.target, "index", str(path),
                             "--collection", "stopped", "--batch-size", "2")  # fmt: skip
        line = one_error_line(err)
        assert status == 1 and "100001 characters" in line and "stored_ids" not in line, line
        with Client(server.target) as c:
            stored = c.count("stopped")
        assert stored >= 8 and f"{stored} of its 12 documents are stored" in line
    finally:
        drop(server, "stopped")


def test_no_central_sentences_is_refused_not_read_as_the_default_three(capsys):
    """central=0 is the proto's "not given": the SDK and the CLI sent it for "none" and
    showed three per sense."""
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "induce", "news", "苹果",
                         "--central", "0")  # fmt: skip
    assert status == 2 and "--central" in one_error_line(err)
    with Client("127.0.0.1:9") as c, pytest.raises(ValueError, match="central"):
        c.induce_senses("news", "苹果", central=0)
    # The same for k: the SDK sent k=0 as "let the silhouette choose".
    with Client("127.0.0.1:9") as c, pytest.raises(ValueError, match="k: the senses to find"):
        c.induce_senses("news", "苹果", k=0)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["induce", "news", "苹果", "-k", "2", "--max-k", "5"], "--max-k"),  # -k won, silently
        (
            ["explain", "我喜欢吃苹果", "--word", "苹果", "--head", "3", "--out", "x.png"],
            "--head",
        ),  # the word's panels drawn, the head ignored
        (["explain", "我喜欢吃苹果", "--long-text", "error", "--truncate"], "--truncate"),
        (
            [
                "disambiguate",
                "我吃苹果",
                "苹果",
                "--inventory",
                "mine",
                "--sense",
                "a=苹果甜",
                "--sense",
                "b=苹果手机",
            ],
            "--inventory",
        ),  # the server's refusal: exit 1
        (["explain", "我吃苹果", "--word", "苹果", "--compare", " "], "--compare"),  # text_b
        (["disambiguate", "我吃苹果", "苹果", "--sense", "a= ", "--sense", "b=苹果"], "--sense"),
        (["inventory", "list", "mine"], "NAME"),  # was ignored
        (["induce", "news", "苹果", "-k", "0"], "-k"),  # the SDK's "(or None to choose)"
        (["occurrences", "news", "我吃苹果", ""], "WORD"),  # the server's "word: ..."
        (["induce", "news", " "], "WORD"),
    ],
)
def test_contradictory_or_empty_options_are_refused_before_any_call(capsys, argv, named):
    """Each was accepted (one option silently won, or was ignored) or refused by the server
    in its own words (text_b: empty), exit 1."""
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", *argv)
    assert status == 2 and named in one_error_line(err), err


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("localhost", "localhost:50051"),
        ("localhost:7", "localhost:7"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:7", "[::1]:7"),
        ("::1", "[::1]:50051"),  # gRPC takes a bare IPv6 address as a host (port 443)
        ("localhost:", "localhost:50051"),  # an empty port is gRPC's default too
        ("dns:///embedsense", "dns:///embedsense:50051"),
        ("dns://10.0.0.2:53/embedsense:7", "dns://10.0.0.2:53/embedsense:7"),
        ("unix:/run/embedsense.sock", "unix:/run/embedsense.sock"),
    ],
)
def test_the_default_port_is_added_only_where_a_target_names_none(given, dialled):
    from embedsense.client.targets import with_port

    assert with_port(given) == dialled


def test_a_dash_reads_one_text_a_line_split_at_newlines_only(server, capsys, monkeypatch):
    """`embed -` split a text at U+2028 and the other separators str.splitlines() knows,
    where `index` (a file) splits at newlines only: the same text gave two vectors."""
    piped(monkeypatch, "苹果很甜\u2028真的很甜\r\n苹果手机\r很贵\u2029真的\n".encode())
    status, out, _ = cli(capsys, "--target", server.target, "--json", "embed", "-")
    texts = [r["text"] for r in json.loads(out)]
    assert status == 0 and texts == ["苹果很甜\u2028真的很甜", "苹果手机\r很贵\u2029真的"], texts


def test_a_dash_reads_standard_input(server, capsys, monkeypatch):
    """`echo 苹果很甜 | embedsense embed -` embedded the text "-"; `inventory create NAME -`
    said "-: no such file"."""
    target = ["--target", server.target]
    piped(monkeypatch, "苹果很甜\n\n苹果手机很贵\n".encode())
    status, out, _ = cli(capsys, *target, "--json", "embed", "-")
    assert status == 0 and [r["text"] for r in json.loads(out)] == ["苹果很甜", "苹果手机很贵"]
    piped(monkeypatch, b"\n")
    status, _, err = cli(capsys, *target, "embed", "-")
    assert status == 2 and "standard input" in one_error_line(err)
    words = {"苹果": {"a": ["苹果很甜"], "b": ["苹果手机"]}}
    piped(monkeypatch, json.dumps(words).encode())
    try:
        status, out, err = cli(capsys, *target, "inventory", "create", "piped", "-")
        assert status == 0 and "piped" in out, err
    finally:
        cli(capsys, *target, "inventory", "delete", "piped")


def test_the_clis_errors_say_which_flag_mends_them(server, tmp_path, capsys):
    """An inventory that exists said "(replace it explicitly)", which names no flag; a file
    to write in a folder that does not exist said "no such file"."""
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"苹果": {"a": ["苹果很甜"], "b": ["苹果手机"]}}))
    target = ["--target", server.target]
    try:
        assert cli(capsys, *target, "inventory", "create", "twice", str(words))[0] == 0
        status, _, err = cli(capsys, *target, "inventory", "create", "twice", str(words))
        assert status == 1 and "--replace replaces it" in one_error_line(err)
    finally:
        cli(capsys, *target, "inventory", "delete", "twice")
    missing = tmp_path / "no-such-folder" / "x.html"
    status, _, err = cli(capsys, *target, "explain", "我吃苹果", "--html", str(missing))
    assert status == 2 and f"no such folder: {missing.parent}" in one_error_line(err)


def test_a_tls_file_that_is_not_pem_is_named_before_any_call(tmp_path, capsys):
    """A key given as the CA was gRPC's "Failed to create security handshaker", reported
    as UNAVAILABLE (is a server running?) and retried, with gRPC's own log lines."""
    from embedsense.client import TLS

    key = tmp_path / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "--tls-ca", str(key), "info")
    assert status == 2 and f"{key}: not a PEM certificate" in one_error_line(err)
    with pytest.raises(ValueError, match="root_certificates: not a PEM certificate"):
        Client("127.0.0.1:9", tls=TLS(root_certificates=b"not a pem"))
    with pytest.raises(ValueError, match="client_key: not a PEM private key"):
        certificate = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        Client("127.0.0.1:9", tls=TLS(client_certificate=certificate, client_key=b"x"))
    trusted = b"-----BEGIN TRUSTED CERTIFICATE-----\nMIIB\n-----END TRUSTED CERTIFICATE-----\n"
    Client("127.0.0.1:9", tls=TLS(root_certificates=trusted)).close()  # OpenSSL's, accepted


def test_health_checks_each_target_and_names_the_one_down(server, capsys):
    """With several targets, one round-robin channel asked whichever answered: SERVING, exit
    0, while a replica was down."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    status, out, err = cli(capsys, "--target", f"{server.target},{down}", "health")
    assert status == 1 and f"{server.target}: SERVING" in out, (out, err)
    assert one_error_line(err) == f"embedsense: error: {down}: UNAVAILABLE"
    status, out, _ = cli(capsys, "--target", server.target, "health")
    assert status == 0 and out.strip() == f"{server.target}: SERVING"
    status, out, _ = cli(capsys, "--target", f"{server.target},{down}", "--json", "health")
    assert status == 1 and json.loads(out) == [
        {"target": server.target, "status": "SERVING"},
        {"target": down, "status": "UNAVAILABLE"},
    ]


# ------------------------------------------------------------------ 5: the download hint


def test_the_unknown_model_hint_names_options_the_server_accepts(tmp_path):
    from embedsense.model.hub import ModelNotAvailableError, fetch_hf_model
    from embedsense.server.cli import parser

    with pytest.raises(ModelNotAvailableError) as caught:
        fetch_hf_model("nobody/no-such-model", allow_download=False)
    message = str(caught.value)
    options = re.findall(r"(?<![\w-])--[a-z][a-z-]*", message)
    assert options, message
    for option in options:
        parser().parse_args([option])  # argparse exits (status 2) on an unknown option
    assert "EMBEDSENSE_ALLOW_DOWNLOAD" in message

    # ... and the flag does what it says: a download is tried (and fails: tests are offline).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedsense.server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "d"),
            "--model",
            "nobody/no-such-model",
            "--dtype",
            "float32",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDSENSE_ALLOW_DOWNLOAD": ""},
    )
    assert done.returncode == 2, done.stderr
    assert "could not download" in done.stderr and "downloading is off" not in done.stderr


# ------------------------------------------------------------------ 6, 7: index


def test_index_with_another_index_on_an_existing_collection_fails(server, tmp_path, capsys):
    """Exit 1, as `collections create --exist-ok` with another index exits: the server's
    collection is what does not fit, learned from it. It was 2, which says the command line
    is wrong and nothing was sent."""
    corpus = tmp_path / "a.txt"
    corpus.write_text("苹果\n香蕉\n", encoding="utf-8")
    base = ["--target", server.target, "index", str(corpus), "--collection", "flat-one"]
    try:
        assert cli(capsys, *base)[0] == 0
        status, _, err = cli(capsys, *base, "--index", "HNSW32")
        assert status == 1
        line = one_error_line(err)
        assert "Flat" in line and "HNSW32" in line and "embedsense drop" in line
        status, _, err = cli(capsys, *base, "--store-tokens")
        assert status == 1 and "tokens" in one_error_line(err)
        corpus.write_text("苹果\n香蕉\n橙子\n", encoding="utf-8")
        assert cli(capsys, *base, "--index", "Flat")[0] == 0
        with Client(server.target) as c:
            info = c.describe_collection("flat-one")
            assert (info.index, info.count) == ("Flat", 3)
        status, out, _ = cli(capsys, "--target", server.target, "drop", "flat-one")
        assert status == 0 and "flat-one" in out
        with Client(server.target) as c, pytest.raises(NotFound):
            c.describe_collection("flat-one")
    finally:
        drop(server, "flat-one")


def test_indexing_the_same_file_twice_replaces_instead_of_doubling(server, tmp_path, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text("我喜欢吃苹果\n我买了最新的苹果手机\n我喜欢吃苹果\n", encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        json.dumps({"text": "我喜欢吃苹果", "metadata": {"source": "jsonl"}}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "mine", "text": "香蕉"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    base = ["--target", server.target, "--json", "index"]
    try:
        status, out, _ = cli(capsys, *base, str(txt), "--collection", "twice")
        assert status == 0 and json.loads(out)["upserted"] == 2  # the repeated line: once
        assert cli(capsys, *base, str(txt), "--collection", "twice")[0] == 0
        assert cli(capsys, *base, str(jsonl), "--collection", "twice")[0] == 0
        with Client(server.target) as c:
            # The jsonl's apple has metadata: another document than the txt's, both kept.
            assert c.count("twice") == 4
            from embedsense.client.bulk import content_id

            ids = [content_id("我喜欢吃苹果", {}), content_id("我喜欢吃苹果", {"source": "jsonl"})]
            plain, tagged, banana = c.get("twice", [*ids, "mine"])
            assert plain.metadata == {} and tagged.metadata == {"source": "jsonl"}
            assert banana.text == "香蕉"
    finally:
        drop(server, "twice")
    status, out, _ = cli(capsys, "index", "--help")
    assert "made from its text and metadata" in " ".join(out.split())  # as content_id


# ------------------------------------------------------------------ 8: text access logs


def test_text_access_lines_carry_the_fields_of_json_ones():
    from embedsense.server.api.observability import (
        JsonFormatter,
        Metrics,
        configure_logging,
        request_id,
    )

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    try:
        configure_logging(json_lines=False)
        text_format = root.handlers[0].formatter
        root.addHandler(Keep())
        token = request_id.set("rid-42")
        try:
            Metrics().observe_request("Embed", "OK", 0.01234)
            json_line = json.loads(JsonFormatter().format(records[-1]))
            text_line = text_format.format(records[-1])
        finally:
            request_id.reset(token)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert text_line.split(" ", 2)[2].startswith("INFO embedsense.access: request")
    for key in ("rpc", "code", "ms", "request_id"):
        assert f"{key}={json_line[key]}" in text_line, (key, text_line)


# ------------------------------------------------------------------ 9: API key files


def test_api_key_files_for_the_server_and_the_cli(e5, tmp_path, capsys, monkeypatch):
    from embedsense.server.api.settings import ServerSettings
    from embedsense.server.cli import parser
    from embedsense.server.config import EngineConfig

    keys = tmp_path / "keys"
    keys.write_text("first-key\n\n  second-key  \n", encoding="utf-8")
    settings = ServerSettings.from_env({"EMBEDSENSE_API_KEY_FILE": str(keys)})
    assert settings.api_keys() == ["first-key", "second-key"]
    both = ServerSettings.from_env({"EMBEDSENSE_API_KEY": "third"}, api_key_file=str(keys))
    assert sorted(both.api_keys()) == ["first-key", "second-key", "third"]
    assert parser().parse_args(["--api-key-file", str(keys)]).api_key_file == str(keys)
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    for bad, why in ((tmp_path / "none", "no such file"), (tmp_path / "empty", "no key")):
        with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*" + why):
            ServerSettings(api_key_file=bad).api_keys()

    running = ServerThread(
        e5, tmp_path / "data", api_key_file=keys, engine=EngineConfig(dtype="float32")
    )
    try:
        target = ["--target", running.target]
        status, _, err = cli(capsys, *target, "info")
        assert status == 1 and "UNAUTHENTICATED" in one_error_line(err)
        client_key = tmp_path / "client-key"
        client_key.write_text("second-key\n", encoding="utf-8")
        status, out, _ = cli(capsys, *target, "--json", "--api-key-file", str(client_key), "info")
        assert status == 0 and json.loads(out)["auth_required"]
        monkeypatch.setenv("EMBEDSENSE_API_KEY_FILE", str(client_key))
        assert cli(capsys, *target, "info")[0] == 0
        monkeypatch.delenv("EMBEDSENSE_API_KEY_FILE")
        monkeypatch.setenv("EMBEDSENSE_API_KEY", "first-key")
        assert cli(capsys, *target, "info")[0] == 0
        # A container's environment holds the server's keys, comma-separated: its first one
        # is the CLI's (the whole list was sent as one key: UNAUTHENTICATED).
        monkeypatch.setenv("EMBEDSENSE_API_KEY", " second-key , first-key")
        assert cli(capsys, *target, "info")[0] == 0
        status, _, err = cli(capsys, *target, "--api-key-file", str(tmp_path / "none"), "info")
        assert status == 2 and "none" in one_error_line(err) and "no such file" in err
        status, _, err = cli(capsys, *target, "--api-key-file", str(tmp_path / "empty"), "info")
        assert status == 2 and "no key" in one_error_line(err)
    finally:
        running.stop()


# ------------------------------------------------------------------ 10: server --help


def test_server_help_shows_each_flags_default_and_variable(monkeypatch):
    from embedsense.server.api.settings import ServerSettings
    from embedsense.server.cli import parser

    monkeypatch.setenv("COLUMNS", "100")
    shown = " ".join(parser().format_help().split())
    settings = ServerSettings()
    for action in parser()._actions:
        if action.dest in ("help", "allow_download", "log_format"):
            continue
        value = getattr(settings, action.dest, None)
        if value is None:
            value = getattr(settings.engine, action.dest, None)
        assert f"EMBEDSENSE_{action.dest.upper()}" in shown, action.dest
        default = "unset" if value is None else str(value)
        if action.option_strings[0].startswith("--no-"):  # it said "default: True"
            default = "on" if value else "off"
        assert f"default: {default}" in shown, (action.dest, default)
    no_log = shown.split("--no-access-log ")[-1].split(" --", 1)[0]
    assert "[default: on; EMBEDSENSE_ACCESS_LOG=0 turns it off]" in no_log, no_log
    assert "EMBEDSENSE_LOG_FORMAT" in shown and "EMBEDSENSE_ALLOW_DOWNLOAD" in shown
    assert "EMBEDSENSE_MAX_BATCH_TOKENS" in shown  # an engine knob without a flag


# ------------------------------------------------------------------ 11: a failed start


def test_a_failed_start_removes_the_data_dir_it_made_and_only_that(tmp_path):
    from embedsense.server.api.app import EmbedSenseServer, StartupError
    from embedsense.server.api.settings import ServerSettings
    from embedsense.server.config import EngineConfig

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    engine = EngineConfig(dtype="float32")
    try:
        cases = [
            dict(port=taken.getsockname()[1]),
            dict(port=0, engine=EngineConfig(model="nobody/no-such-model", dtype="float32")),
        ]
        for case in cases:
            made = tmp_path / "new" / "data"
            settings = ServerSettings(host="127.0.0.1", data_dir=made, **{"engine": engine, **case})
            with pytest.raises(StartupError):
                asyncio.run(EmbedSenseServer(settings).start())
            assert not (tmp_path / "new").exists(), case

        kept = tmp_path / "kept"  # there before: not the server's to remove
        kept.mkdir()
        settings = ServerSettings(host="127.0.0.1", port=taken.getsockname()[1], data_dir=kept)
        with pytest.raises(StartupError):
            asyncio.run(EmbedSenseServer(settings).start())
        assert kept.is_dir()
    finally:
        taken.close()


# ------------------------------------------------------------------ 12: the demo's log


def test_the_demo_logs_to_a_private_directory_and_follows_no_planted_link(
    tmp_path, monkeypatch, capsys
):
    from embedsense.client import demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    victim = tmp_path / "victim"
    victim.write_text("precious", encoding="utf-8")
    (tmp_path / "embedsense-demo-server.log").symlink_to(victim)  # the old fixed name

    class ServerThatExits:  # a server that dies at once: the demo stops at the first check
        returncode = 1

        def __init__(self, command, **kwargs) -> None:
            kwargs["stdout"].write("the server's last words\n")
            kwargs["stdout"].flush()

        def poll(self) -> int:
            return 1

        def send_signal(self, sig) -> None:
            pass

        def wait(self, timeout=None) -> int:
            return 1

    monkeypatch.setattr(demo.subprocess, "Popen", ServerThatExits)
    monkeypatch.setattr(sys, "argv", ["demo"])
    with pytest.raises(SystemExit, match="the server's last words"):
        demo.main()
    assert victim.read_text(encoding="utf-8") == "precious"
    shown = re.search(r"server log: (\S+)", capsys.readouterr().out)
    log = Path(shown.group(1))
    assert log.read_text(encoding="utf-8") == "the server's last words\n"
    assert log.parent.parent == tmp_path and log.parent.stat().st_mode & 0o777 == 0o700


# ------------------------------------------------------------------ the demo, run again


def test_the_demo_runs_again_on_a_server_that_has_its_collection(client, capsys):
    """`demo --target` a second time, against the same server (a Compose volume keeps it):
    the corpus's ids make the upsert a rewrite, so the same report comes back, not
    ALREADY_EXISTS as a traceback. A collection of that name the demo cannot use (no
    token vectors) stops it with a message, untouched."""
    from embedsense.client import demo

    demo.run(client, "demo-again")
    first = client.count("demo-again")
    demo.run(client, "demo-again")
    assert client.count("demo-again") == first
    assert "using the collection 'demo-again' already on the server" in capsys.readouterr().out

    client.create_collection("demo-without-tokens")
    with pytest.raises(SystemExit, match="demo-without-tokens.*token vectors"):
        demo.run(client, "demo-without-tokens")
    assert client.count("demo-without-tokens") == 0


# ------------------------------------------------------------------ a client-only install


def test_the_server_command_without_the_server_extra_says_what_to_install(tmp_path):
    """The base install is the client, but it has the `embedsense-server` command too: where
    the server's dependencies are missing (here torch, made unimportable), it says so in one
    line, not with an ImportError's traceback; `embedsense serve` runs that same program."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "torch.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), *sys.path])}
    script = Path(sys.executable).with_name("embedsense-server")
    for command in (
        [sys.executable, "-m", "embedsense.server", "--help"],
        [str(script), "--help"],
        [sys.executable, "-m", "embedsense.client.cli", "serve", "--help"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command, done.stderr[-800:])
        assert "Traceback" not in done.stderr, (command, done.stderr[-800:])
        assert "torch is not installed" in done.stderr and "[server]" in done.stderr, done.stderr


# ------------------------------------------------------------------ what a new user piped in

TWO_LINES = "苹果很好吃\n香蕉\n"


def piped(monkeypatch, data: bytes, errors: str = "strict") -> None:
    """Standard input holding `data`, with the bytes beneath it as a real one has."""
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), errors=errors))


def index_in_a_subprocess(server, name: str, collection: str, **run) -> str:
    """`embedsense index NAME --collection COLLECTION` as a program: its stdout, once it
    exited 0 (a pipe must be the program's own standard input, not pytest's)."""
    done = subprocess.run(
        [*CLI, "--target", server.target, "index", name, "--collection", collection],
        capture_output=True,
        timeout=60,
        **run,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.parametrize("name", ["/dev/stdin", "-"])
def test_index_of_standard_input_stores_every_line_it_reports(server, name):
    """`printf ... | embedsense index /dev/stdin` said "2 documents stored in 'pipe1' (0 in
    all, Flat)" and stored nothing: the file was read to check it, then again to send it,
    and a pipe is empty the second time. `-` was "no such file"."""
    collection = "pipe-dash" if name == "-" else "pipe-stdin"
    try:
        out = index_in_a_subprocess(server, name, collection, input=TWO_LINES.encode())
        assert f"2 documents stored in '{collection}' (2 in all, Flat)" in out, out
        with Client(server.target) as c:
            assert c.count(collection) == 2
    finally:
        drop(server, collection)


def test_index_of_a_process_substitution_stores_every_line(server):
    """`index <(...)` stored nothing, as /dev/stdin did."""
    read_end, write_end = os.pipe()  # what bash's <(...) hands over: /dev/fd/N
    os.write(write_end, TWO_LINES.encode())
    os.close(write_end)
    try:
        out = index_in_a_subprocess(server, f"/dev/fd/{read_end}", "pipe-fd", pass_fds=[read_end])
        assert "2 documents stored in 'pipe-fd' (2 in all" in out, out
    finally:
        os.close(read_end)
        drop(server, "pipe-fd")


def test_index_of_a_named_fifo_stores_every_line(server, tmp_path):
    """It hung: the second read of the FIFO waited for a writer that had gone."""
    import threading

    fifo = tmp_path / "docs.txt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(TWO_LINES,), daemon=True)
    writer.start()
    try:
        out = index_in_a_subprocess(server, str(fifo), "pipe-fifo")
        assert "2 documents stored in 'pipe-fifo' (2 in all" in out, out
    finally:
        if writer.is_alive():  # the program never opened it: let the writer's open return
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        drop(server, "pipe-fifo")


def test_index_of_a_pipe_too_large_to_hold_says_so_before_anything_is_sent(capsys, monkeypatch):
    """A pipe is read once, into memory: one over the limit is refused, not half-read."""
    from embedsense.client import document_files

    monkeypatch.setattr(document_files, "PIPED_LIMIT_BYTES", 16)
    piped(monkeypatch, TWO_LINES.encode() * 4)
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "index", "-", "--collection", "big")
    line = one_error_line(err)
    assert status == 2 and "-: more than 16 bytes" in line and "name a file instead" in line, line


def test_index_reports_what_it_sent_not_what_it_checked(server, tmp_path, capsys, monkeypatch):
    """The count in "N documents stored" came from the check's read of the file, whatever
    the later reads sent: a file that changed between them was reported as stored whole."""
    from embedsense.client import cli as cli_module

    path = tmp_path / "growing.txt"
    path.write_text(TWO_LINES, encoding="utf-8")
    checked = cli_module._collection_for  # runs between the check and the sending

    def rewritten_meanwhile(args, client):
        path.write_text("苹果很好吃\n", encoding="utf-8")
        checked(args, client)

    monkeypatch.setattr(cli_module, "_collection_for", rewritten_meanwhile)
    try:
        status, out, err = cli(capsys, "--target", server.target, "index", str(path),
                               "--collection", "changed")  # fmt: skip
        line = one_error_line(err)
        assert status == 2 and "2 documents stored" not in out, (out, err)
        assert f"{path}: changed while it was read" in line and "1 of them stored" in line, line
    finally:
        drop(server, "changed")


def test_embed_dash_names_the_line_and_byte_that_are_not_utf8(capsys, monkeypatch):
    """`printf '\\xff\\xfe bad utf8\\n' | embedsense embed -` said "texts[0]: lone surrogate
    U+DCFF at position 0; no UTF-8 holds it": the SDK's words for bytes it never saw."""
    piped(monkeypatch, b"\xff\xfe bad utf8\n", errors="surrogateescape")
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "--json", "embed", "-")
    assert status == 2
    assert one_error_line(err) == "embedsense: error: -:1: not UTF-8 (byte 0xff at column 1)"
    piped(monkeypatch, "好\n".encode() + b"caf\xe9\n")
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "embed", "-")
    assert status == 2
    assert one_error_line(err) == "embedsense: error: -:2: not UTF-8 (byte 0xe9 at column 4)"


@pytest.mark.parametrize("texts", [["-", "香蕉"], ["香蕉", "-"], ["-", "-"]])
def test_embed_dash_beside_other_texts_is_refused(capsys, monkeypatch, texts):
    """`printf '苹果\\n' | embedsense embed - 香蕉` embedded the text "-" and never read
    standard input."""
    piped(monkeypatch, "苹果\n".encode())
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "--json", "embed", *texts)
    line = one_error_line(err)
    assert status == 2 and "- reads the texts from standard input" in line, line


def test_a_client_certificate_without_its_key_names_where_each_came_from(capsys, monkeypatch):
    """EMBEDSENSE_TLS_CLIENT_CERT alone said "--tls-cert and --tls-key go together", flags
    the user never gave."""
    monkeypatch.delenv("EMBEDSENSE_TLS_CLIENT_KEY", raising=False)
    monkeypatch.setenv("EMBEDSENSE_TLS_CLIENT_CERT", "/tmp/x.pem")
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "info")
    line = one_error_line(err)
    assert status == 2 and "--tls" not in line, line
    assert "EMBEDSENSE_TLS_CLIENT_CERT without EMBEDSENSE_TLS_CLIENT_KEY" in line, line

    monkeypatch.delenv("EMBEDSENSE_TLS_CLIENT_CERT")
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "--tls-key", "k.pem", "info")
    line = one_error_line(err)
    assert status == 2 and "--tls-key without --tls-cert (or EMBEDSENSE_TLS_CLIENT_CERT)" in line


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (
            "127.0.0.1:115908",
            "port '115908': out of range (a port is 1 to 65535)",
        ),  # dialled 50372, its mod 65536
        ("127.0.0.1:abc", "port 'abc': not a number"),
        ("http://127.0.0.1:50051", "http:// is not a gRPC target"),
        ("bad host", "'bad host' is not a host name or an IP address"),
        ("127.0.0.1:1,127.0.0.1:99999", "target '127.0.0.1:99999': port '99999': out of range"),
    ],
)
@pytest.mark.parametrize("command", ["health", "info"])
def test_a_target_no_server_can_have_is_a_bad_command_line(capsys, command, target, why):
    """Each went on to the network: a port over 65535 reached another port (`health` said
    SERVING), the others were UNAVAILABLE, or gRPC's bare "Failed to create channel"."""
    status, _, err = cli(capsys, "--target", target, command)
    line = one_error_line(err)
    assert status == 2 and why in line, line
    assert line.startswith("embedsense: error: --target: target "), line


def test_a_port_variable_that_is_no_port_is_named(capsys, monkeypatch):
    """EMBEDSENSE_PORT=abc made the default target 127.0.0.1:abc: UNAVAILABLE, exit 1."""
    monkeypatch.setenv("EMBEDSENSE_PORT", "abc")
    status, _, err = cli(capsys, "info")
    line = one_error_line(err)
    assert status == 2 and "EMBEDSENSE_PORT 'abc': not a number (a port is 1 to 65535)" in line


def test_an_export_piped_into_index_with_format_jsonl_keeps_ids_and_metadata(server, tmp_path):
    """`docs export A | index - --format jsonl --collection B` copies a collection: a pipe
    was read as text (the format came from a name it does not have), so each JSON line was
    stored as a document whose text was the JSON."""
    lines = [
        {"id": "a1", "text": "苹果很好吃", "metadata": {"kind": "fruit"}},
        {"id": "a2", "text": "香蕉", "metadata": {"kind": "fruit", "n": 2}},
    ]
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    try:
        index_in_a_subprocess(server, str(source), "copy-from")
        exported = subprocess.run(
            [*CLI, "--target", server.target, "docs", "export", "copy-from"],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        done = subprocess.run(
            [*CLI, "--target", server.target, "index", "-", "--format", "jsonl",
             "--collection", "copy-to"],
            input=exported, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        with Client(server.target) as c:
            copied = {d.id: (d.text, d.metadata) for d in c.get("copy-to", ["a1", "a2"])}
        assert copied == {line["id"]: (line["text"], line["metadata"]) for line in lines}
    finally:
        drop(server, "copy-from")
        drop(server, "copy-to")


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.txt"])
def test_format_text_reads_any_file_one_document_a_line(server, tmp_path, name):
    """--format text reads even a .jsonl name as lines of text, and --format jsonl a .txt
    name as JSON lines: the flag, where given, wins over the suffix."""
    path = tmp_path / name
    path.write_text('{"id": "j1", "text": "苹果"}\n')
    as_text = name.endswith(".jsonl")
    try:
        done = subprocess.run(
            [*CLI, "--target", server.target, "index", str(path), "--collection", "fmt",
             "--format", "text" if as_text else "jsonl"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        with Client(server.target) as c:
            [doc] = c.scroll("fmt")
        assert doc.text == ('{"id": "j1", "text": "苹果"}' if as_text else "苹果"), doc
    finally:
        drop(server, "fmt")


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "1e39", "near"])
def test_a_score_threshold_that_is_no_finite_number_is_a_bad_command_line(capsys, threshold):
    """`--score-threshold nan` was sent, and the server's refusal was exit 1 naming
    "score_threshold": the command line was wrong, so it is exit 2 naming the flag."""
    status, _, err = cli(capsys, "--target", "127.0.0.1:9", "search", "news", "苹果",
                         f"--score-threshold={threshold}")  # fmt: skip
    line = one_error_line(err)
    assert status == 2 and "--score-threshold" in line and threshold in line, line
