"""The milvus backend's settings from the command line and the environment (issue 25): its
deadline per Milvus call (--milvus-timeout / EMBEDSENSE_MILVUS_TIMEOUT_S) and its search calls
in flight (--milvus-search-calls / EMBEDSENSE_MILVUS_SEARCH_CALLS) reach the backend, bad
values are refused at start with the setting's name, and the deadline is the one a real start
waits."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from embedsense.server import cli
from embedsense.server.api.app import EmbedSenseServer, StartupError
from embedsense.server.api.settings import ServerSettings
from embedsense.server.index import BackendSettings, open_backend


def test_the_flag_and_the_variable_reach_the_backend_settings(started):
    def timeout(*argv: str, **environ: str) -> float:
        status, settings = started(*argv, **environ)
        assert status == 0
        return settings.backend().milvus_timeout_s

    assert timeout() == ServerSettings().milvus_timeout_s
    assert timeout("--milvus-timeout", "2.5") == 2.5
    assert timeout(EMBEDSENSE_MILVUS_TIMEOUT_S="7") == 7.0
    assert timeout("--milvus-timeout", "3") == 3.0  # the flag wins over the variable set above


def test_search_calls_in_flight_reach_every_collection(started, tmp_path):
    def search_calls(*argv: str, **environ: str) -> int:
        status, settings = started(*argv, **environ)
        assert status == 0
        return settings.backend().milvus_search_calls

    assert search_calls() == ServerSettings().milvus_search_calls == 2
    assert search_calls("--milvus-search-calls", "1") == 1
    assert search_calls(EMBEDSENSE_MILVUS_SEARCH_CALLS="8") == 8
    backend = open_backend(
        BackendSettings("milvus", milvus_uri=str(tmp_path / "i.db"), milvus_search_calls=5)
    )
    try:
        backend.create("c", model="m", dim=4)
        assert backend.get("c")._searches.max_calls == 5
    finally:
        backend.close()


def test_help_names_the_flag_its_variable_and_default():
    shown = " ".join(cli.parser().format_help().split())
    assert "--milvus-timeout" in shown and "EMBEDSENSE_MILVUS_TIMEOUT_S" in shown
    assert f"default: {ServerSettings().milvus_timeout_s}" in shown
    assert "--milvus-search-calls" in shown and "EMBEDSENSE_MILVUS_SEARCH_CALLS" in shown


@pytest.mark.parametrize(
    "argv, environ, named",
    [
        (["--milvus-timeout", "0"], {}, "milvus timeout 0.0"),
        (["--milvus-timeout", "-1"], {}, "milvus timeout -1.0"),
        ([], {"EMBEDSENSE_MILVUS_TIMEOUT_S": "soon"}, "EMBEDSENSE_MILVUS_TIMEOUT_S='soon'"),
        ([], {"EMBEDSENSE_MILVUS_TIMEOUT_S": "0"}, "milvus timeout 0.0"),
        (
            ["--milvus-search-calls", "0"],
            {},
            "milvus search calls 0: expected a whole number, at least 1 (--milvus-search-calls",
        ),
        ([], {"EMBEDSENSE_MILVUS_SEARCH_CALLS": "-2"}, "milvus search calls -2"),
        ([], {"EMBEDSENSE_MILVUS_SEARCH_CALLS": "two"}, "EMBEDSENSE_MILVUS_SEARCH_CALLS='two'"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_at_start(
    started, monkeypatch, capsys, argv, environ, named
):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert named in error and "cannot start" in error, error


def test_a_flag_value_that_is_no_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parser().parse_args(["--milvus-timeout", "soon"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--milvus-timeout" in error and "invalid float value: 'soon'" in error, error


def test_a_real_start_gives_up_on_a_silent_milvus_after_the_deadline_set(e5, tmp_path):
    """A listener that accepts and never answers: the start fails after about the deadline
    set (1 s), not after the default's 30 s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    args = cli.parser().parse_args(
        ["--index-backend", "milvus", "--milvus-uri", f"http://127.0.0.1:{silent.getsockname()[1]}",
         "--milvus-timeout", "1", "--host", "127.0.0.1", "--port", "0"]
    )  # fmt: skip
    overrides = {name: getattr(args, name) for name in ("index_backend", "milvus_uri", "host")}
    settings = ServerSettings.from_env(
        {}, **overrides, port=0, milvus_timeout_s=args.milvus_timeout_s, data_dir=tmp_path
    )
    started = time.monotonic()
    try:
        with pytest.raises(StartupError, match="milvus"):
            asyncio.run(EmbedSenseServer(settings, model=e5).start())
    finally:
        silent.close()
    assert time.monotonic() - started < 15  # the default deadline would take over 30 s
