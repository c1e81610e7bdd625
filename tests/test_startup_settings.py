"""Start-up and settings at their edges: IPv6 hosts, API-key settings that hold no key,
taken HTTP and metrics ports, and numbers no server can run with. Each is refused at start
with exit status 2 and one line naming the setting, before the model loads where it can;
none is a traceback, and none is a server that starts with something quietly off."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import ServerThread

from embedsense.server import cli
from embedsense.server.api import app
from embedsense.server.api.app import EmbedSenseServer, StartupError
from embedsense.server.api.settings import ServerSettings
from embedsense.server.config import EngineConfig

NO_MODEL = EngineConfig(model="nobody/no-such-model", dtype="float32")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture
def taken():
    """A port something else listens on (127.0.0.1)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def one_line(err: str) -> str:
    """stderr's only line, the server's refusal."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("embedsense-server: cannot start: "), err
    return lines[0]


# ------------------------------------------------------------------ 1: IPv6 hosts


def test_ipv6_hosts_are_bracketed_for_grpc_and_bare_for_sockets():
    for host in ("::", "[::]"):
        assert app.grpc_address(host, 50051) == "[::]:50051"
        assert app.bare_host(host) == "::"
    assert app.grpc_address("[::1]", 7) == "[::1]:7"
    assert app.grpc_address("127.0.0.1", 7) == "127.0.0.1:7"
    assert app.grpc_address("localhost", 7) == "localhost:7"
    assert ServerSettings(host="[::1]", metrics_host="[::1]").host == "::1"
    assert ServerSettings(host="[::1]", metrics_host="[::1]").metrics_host == "::1"
    for bad in ("[::1", "::1]", "[]", ""):
        with pytest.raises(ValueError, match=r"--host"):
            ServerSettings(host=bad)


@needs_ipv6
def test_check_port_free_takes_an_ipv6_host_bracketed_or_not():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        for host in ("::1", "[::1]"):
            with pytest.raises(StartupError, match=rf"\[::1\]:{held}\b.*in use"):
                app.check_port_free(host, held)
    for host in ("::1", "[::1]"):
        app.check_port_free(host, free_port("::1"))  # it was "[::1]": no such address


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_server_on_the_ipv6_loopback_answers_grpc_http_and_metrics(e5, tmp_path, host):
    from embedsense.client import Client

    port = free_port("::1")
    running = ServerThread(e5, tmp_path, host=host, port=port, http_port=0, metrics_port=0)
    try:
        assert running.port == port
        with Client(f"[::1]:{port}", timeout=60) as client:
            assert client.info().dim == 384
        server = running.server
        with urllib.request.urlopen(f"http://[::1]:{server.http_port}/health", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://[::1]:{server.metrics_port}/metrics", timeout=30) as r:
            assert r.status == 200 and b"embedsense" in r.read()
    finally:
        running.stop()


# ------------------------------------------------------------------ 2: API keys


@pytest.mark.parametrize(
    "argv, environ",
    [
        ([], {"EMBEDSENSE_API_KEY": " , "}),
        ([], {"EMBEDSENSE_API_KEY": ","}),
        ([], {"EMBEDSENSE_API_KEY": "   "}),
        (["--api-key", ""], {}),  # an unset $KEY on a command line
        (["--api-key", " ,, "], {}),
        (["--api-key", ""], {"EMBEDSENSE_API_KEY": "a-key"}),  # the flag wins: refused
    ],
)
def test_an_api_key_setting_that_holds_no_key_is_refused(started, capsys, argv, environ):
    """Each started a server without auth, and said nothing."""
    status, settings = started(*argv, **environ)
    assert status == 2 and settings is None
    line = one_line(capsys.readouterr().err)
    assert "--api-key" in line and "EMBEDSENSE_API_KEY" in line and "no key" in line, line


def test_an_empty_api_key_variable_is_unset_and_keys_are_kept(started, capsys):
    status, settings = started(EMBEDSENSE_API_KEY="")
    assert status == 0 and settings.api_key is None and not settings.auth_required
    status, settings = started("--api-key", " a , ,b ")
    assert status == 0 and settings.api_keys() == ["a", "b"]
    with pytest.raises(ValueError, match="no key"):
        ServerSettings(api_key=",")


# ------------------------------------------------------------------ 3: taken ports


@pytest.mark.parametrize("name, flag", [("http_port", "--http-port"),
                                        ("metrics_port", "--metrics-port")])  # fmt: skip
def test_a_taken_http_or_metrics_port_is_refused_before_the_model_loads(
    tmp_path, taken, name, flag
):
    """The model named does not exist: a refusal about it means the port was checked late."""
    settings = ServerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "d",
                              engine=NO_MODEL, **{name: taken})  # fmt: skip
    with pytest.raises(StartupError) as refused:
        asyncio.run(EmbedSenseServer(settings).start())
    message = str(refused.value)
    assert f"127.0.0.1:{taken}" in message and flag in message, message
    assert "no-such-model" not in message
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name, flag", [("http_port", "--http-port"),
                                        ("metrics_port", "--metrics-port")])  # fmt: skip
def test_front_ends_refuse_a_taken_port_before_anything_starts(tmp_path, taken, name, flag):
    """`--frontends N` checked no metrics port (found taken after the model loaded, as an
    OSError traceback) and named no flag for a taken HTTP port."""
    from embedsense.server.frontends.host import EngineHost

    settings = ServerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "d",
                              engine=NO_MODEL, **{name: taken})  # fmt: skip
    with pytest.raises(StartupError) as refused:
        asyncio.run(EngineHost(settings, 1).start())
    message = str(refused.value)
    assert f"127.0.0.1:{taken}" in message and flag in message, message
    assert "no-such-model" not in message


def test_front_ends_listen_on_different_ports_when_any_free_ones_are_asked_for():
    from embedsense.server.frontends.host import free_ports

    for _ in range(50):  # two probes at once: never the same port
        chosen = free_ports("127.0.0.1", ["port", "http_port"])
        assert chosen["port"] != chosen["http_port"], chosen


@needs_ipv6
def test_front_ends_find_free_ports_on_a_bracketed_ipv6_host():
    from embedsense.server.frontends.host import free_ports

    assert set(free_ports("[::1]", ["port"])) == {"port"}  # it bound "[::1]": no such address


def test_the_server_program_refuses_a_taken_metrics_port_in_one_line(tmp_path, taken):
    """It loaded the model, served gRPC, then died on the metrics port with a traceback
    (OSError, then "Event loop is closed"), exit status 1."""
    done = subprocess.run(
        [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path / "d"), "--dtype", "float32", "--metrics-port",
         str(taken), "--log-format", "text"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    line = one_line(done.stderr)
    assert f"127.0.0.1:{taken}" in line and "--metrics-port" in line, line


@pytest.mark.parametrize("name, flag", [("http_port", "--http-port"),
                                        ("metrics_port", "--metrics-port")])  # fmt: skip
def test_a_port_lost_after_the_check_stops_what_started(
    e5, tmp_path, taken, monkeypatch, name, flag
):
    """Taken between the check and the listen: StartupError, with the gRPC port and the
    engine closed again (the metrics port's was an OSError, everything left running)."""
    monkeypatch.setattr(app, "check_port_free", lambda *_, **__: None)
    grpc_port = free_port()
    settings = ServerSettings(host="127.0.0.1", port=grpc_port, data_dir=tmp_path / "d",
                              engine=EngineConfig(dtype="float32"), **{name: taken})  # fmt: skip
    server = EmbedSenseServer(settings, e5)
    with pytest.raises(StartupError) as refused:
        asyncio.run(server.start())
    message = str(refused.value)
    assert f"127.0.0.1:{taken}" in message and flag in message, message
    assert server.engine._closing and not server.engine._worker.is_alive()  # closed
    with socket.socket() as again:  # the gRPC port is free again
        again.bind(("127.0.0.1", grpc_port))


def test_two_listeners_on_one_port_are_refused():
    with pytest.raises(ValueError, match=r"--port.*--http-port|--http-port.*--port"):
        ServerSettings(port=8080, http_port=8080)
    with pytest.raises(ValueError, match="--metrics-port"):
        ServerSettings(port=50051, http_port=8080, metrics_port=8080)
    ServerSettings(port=0, http_port=0, metrics_port=0)  # any free ones: different
    ServerSettings(port=9000, metrics_port=9000, metrics_host="127.0.0.2")  # other address


# ------------------------------------------------------------------ 4: numbers


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("PORT", "5_0051", "plain digits"),
        ("PORT", "+1", "plain digits"),
        ("PORT", "-1", "0-65535"),
        ("PORT", "65536", "0-65535"),
        ("HTTP_PORT", "8_080", "plain digits"),
        ("METRICS_PORT", "70000", "0-65535"),
        ("MAX_MESSAGE_BYTES", "5000000000", "1-2147483647"),
        ("MAX_MESSAGE_BYTES", "0", "1-2147483647"),
        ("MAX_MESSAGE_BYTES", "-1", "1-2147483647"),
        ("MAX_TEXTS_PER_REQUEST", "0", "at least 1"),
        ("MAX_TEXTS_PER_REQUEST", "-3", "at least 1"),
        ("MAX_TEXT_CHARS", "-1", "at least 1"),
        ("MAX_TEXT_CHARS", "0", "at least 1"),
        ("MAX_REQUEST_CHARS", "0", "at least 1"),
        ("MAX_CONCURRENT_STREAMS", "0", "at least 1"),
        ("SHUTDOWN_GRACE_S", "-1", "0 or more"),
        ("SHUTDOWN_GRACE_S", "nan", "0 or more"),
        ("SHUTDOWN_GRACE_S", "inf", "0 or more"),
        ("HTTP_DEADLINE_S", "0", "more than 0"),
        ("HTTP_DEADLINE_S", "inf", "more than 0"),
        ("HTTP_BODY_TIMEOUT_S", "-1", "more than 0"),
        ("HTTP_BODY_TIMEOUT_S", "nan", "more than 0"),
        ("HTTP_MAX_BODY_BYTES", "-5", "at least 1"),
        ("HTTP_MAX_BODY_BYTES", "0", "at least 1"),
        ("HTTP_MAX_BODY_BYTES_IN_FLIGHT", "0", "at least 1"),
        ("MILVUS_TIMEOUT_S", "nan", "more than 0"),
        ("MILVUS_TIMEOUT_S", "inf", "more than 0"),
    ],
)
def test_a_number_no_server_can_run_with_is_refused_naming_it(variable, value, expected):
    """Each was accepted: a server that refused every request, never stopped waiting, or
    (5000000000 bytes) died of an OverflowError after the model loaded."""
    with pytest.raises(ValueError) as refused:
        ServerSettings.from_env({f"EMBEDSENSE_{variable}": value})
    message = str(refused.value)
    assert f"EMBEDSENSE_{variable}" in message and expected in message, message


@pytest.mark.parametrize(
    "argv, environ, named",
    [
        ([], {"EMBEDSENSE_MAX_MESSAGE_BYTES": "5000000000"}, "EMBEDSENSE_MAX_MESSAGE_BYTES"),
        ([], {"EMBEDSENSE_PORT": "5_0051"}, "EMBEDSENSE_PORT"),
        (["--http-port", "70000"], {}, "--http-port"),
        (["--milvus-timeout", "nan"], {}, "--milvus-timeout"),
        (["--device", "cpu", "--dtype", "float16"], {}, "--dtype"),  # was found once loaded
    ],
)
def test_the_program_refuses_them_in_one_line(started, capsys, argv, environ, named):
    status, settings = started(*argv, **environ)
    assert status == 2 and settings is None
    assert named in one_line(capsys.readouterr().err)


def test_a_port_flag_in_other_than_plain_digits_is_a_usage_error(capsys):
    for flag in ("--port", "--http-port", "--metrics-port"):
        with pytest.raises(SystemExit) as exit_:
            cli.parser().parse_args([flag, "5_0051"])
        assert exit_.value.code == 2
        assert flag in capsys.readouterr().err


def test_the_edges_of_each_range_are_accepted(started):
    environ = {"EMBEDSENSE_PORT": "65535", "EMBEDSENSE_HTTP_PORT": "0",
               "EMBEDSENSE_METRICS_PORT": "0", "EMBEDSENSE_MAX_MESSAGE_BYTES": "2147483647",
               "EMBEDSENSE_MAX_TEXTS_PER_REQUEST": "1", "EMBEDSENSE_MAX_TEXT_CHARS": "1",
               "EMBEDSENSE_MAX_REQUEST_CHARS": "1", "EMBEDSENSE_MAX_CONCURRENT_STREAMS": "1",
               "EMBEDSENSE_SHUTDOWN_GRACE_S": "0", "EMBEDSENSE_HTTP_DEADLINE_S": "0.5",
               "EMBEDSENSE_HTTP_BODY_TIMEOUT_S": "0.5", "EMBEDSENSE_HTTP_MAX_BODY_BYTES": "1",
               "EMBEDSENSE_HTTP_MAX_BODY_BYTES_IN_FLIGHT": "1"}  # fmt: skip
    status, settings = started(**environ)
    assert status == 0
    assert (settings.port, settings.http_port, settings.metrics_port) == (65535, 0, 0)
    assert settings.max_message_bytes == 2**31 - 1 and settings.shutdown_grace_s == 0
    status, settings = started("--port", "0", "--http-port", "8080")
    assert status == 0 and (settings.port, settings.http_port) == (0, 8080)


def test_every_number_of_the_settings_has_a_rule():
    """A numeric field added without a range is caught here."""
    from embedsense.server.api.settings import NUMBER_RULES

    numeric = {f.name for f in dataclasses.fields(ServerSettings)
               if f.type.replace(" | None", "") in ("int", "float")}  # fmt: skip
    assert numeric == set(NUMBER_RULES)


def test_the_flags_the_messages_name_are_the_programs():
    from embedsense.server.api.settings import FLAGS

    flags = {cli.field_of(flag, options): flag for flag, _, options in cli.SETTINGS_FLAGS}
    for name, flag in FLAGS.items():
        assert flags[name] == flag, name


# ------------------------------------------------------------------ 5: CORS origins


def test_cors_origins_are_kept_as_browsers_send_them():
    """A browser's Origin is lower case, without the scheme's default port or a slash; an
    origin written otherwise matched no request, in silence."""
    given = " https://App.Example:443/ , http://Local.Example:8080,http://[0:0::1]:80 "
    settings = ServerSettings(cors_allow_origin=given)
    assert (
        settings.cors_allow_origin == "https://app.example,http://local.example:8080,http://[::1]"
    )
    # Other schemes browsers send (extensions, app shells), and names in IDNA's ASCII.
    given = "chrome-extension://abcdef, capacitor://localhost, https://Bücher.example"
    assert ServerSettings(cors_allow_origin=given).cors_allow_origin == (
        "chrome-extension://abcdef,capacitor://localhost,https://xn--bcher-kva.example"
    )
    assert ServerSettings(cors_allow_origin="*").cors_allow_origin == "*"


@pytest.mark.parametrize(
    "origin", ["app2.example", "https://app.example/path", "null", "https://a b.example",
               "https://app.example?x=1", "https://user@app.example", "https://a.example:99999",
               "http://[::1", "https://a.example:0"],
)  # fmt: skip
def test_a_cors_origin_no_browser_sends_is_refused_naming_it(origin):
    with pytest.raises(ValueError) as refused:
        ServerSettings.from_env({"EMBEDSENSE_CORS_ALLOW_ORIGIN": f"https://ok.example,{origin}"})
    message = str(refused.value)
    assert repr(origin) in message and "--cors-allow-origin" in message, message
    assert "EMBEDSENSE_CORS_ALLOW_ORIGIN" in message and "scheme://host" in message, message
