"""`embedsense-server` (also `python -m embedsense.server`): run the gRPC server.

    embedsense-server --data-dir ./data --port 50051

Every flag falls back to its EMBEDSENSE_* variable (EMBEDSENSE_PORT, EMBEDSENSE_DTYPE...),
then to the defaults in ServerSettings and EngineConfig; --help shows both, read from those
classes. The client's `embedsense serve` runs this program: the client package imports
nothing of the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from embedsense.server.api.app import StartupError, serve
from embedsense.server.api.observability import configure_logging
from embedsense.server.api.settings import ENGINE_KNOBS, ServerSettings
from embedsense.server.index.backend import BACKENDS

LOG_FORMATS = ("json", "text")
# The model loader reads this variable (model/hub.py); --allow-download sets it for this
# process, so that the flag and the variable are one switch.
ALLOW_DOWNLOAD = "EMBEDSENSE_ALLOW_DOWNLOAD"


def whole_number(text: str) -> int:
    """A flag's whole number in plain digits: int() would read "5_0051" as 50051."""
    if not re.fullmatch(r"-?[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number in plain digits")
    return int(text)


# Flags that set a ServerSettings field or an engine knob of the same name, with their help.
SETTINGS_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--host", "the address to listen on", {}),
    ("--port", "the gRPC port (0: any free one)", {"type": whole_number}),
    ("--data-dir", "the faiss backend's store and snapshots", {}),
    ("--index-backend", "where collections live", {"choices": list(BACKENDS)}),
    (
        "--milvus-uri",
        "milvus: ./index.db (milvus-lite) or http://host:19530 (the token, if "
        "any, from EMBEDSENSE_MILVUS_TOKEN)",
        {},
    ),
    (
        "--milvus-timeout",
        "milvus: the deadline of every call to Milvus, in seconds",
        {"type": float, "dest": "milvus_timeout_s"},
    ),
    (
        "--milvus-search-calls",
        "milvus: search calls in flight at once per collection and search parameters; "
        "searches that come meanwhile go to Milvus together, as one call",
        {"type": whole_number},
    ),
    ("--replica", "this server's name in Info and logs (unset: host:port)", {}),
    ("--model", "a registry name, a Hugging Face repository id or a local model directory", {}),
    (
        "--api-key",
        "every call but health and reflection needs it; comma-separated for several "
        "(shows in `ps`: prefer --api-key-file)",
        {},
    ),
    (
        "--api-key-file",
        "a file of API keys, one a line (blank lines skipped), read again on SIGHUP; with "
        "--api-key, either file's or flag's keys are accepted",
        {},
    ),
    ("--device", "where the model runs", {"choices": ["auto", "cpu", "cuda"]}),
    (
        "--dtype",
        "the compute precision (auto: chosen for the device)",
        {"choices": ["auto", "float32", "float16", "bfloat16"]},
    ),
    (
        "--cpu-flags",
        "the processor flags --dtype auto decides from on a CPU, e.g. 'avx512f avx512_bf16' "
        "(unset: this machine's): pins the choice across a fleet of mixed machines",
        {},
    ),
    ("--threads", "CPU threads for torch (unset: torch's default)", {"type": whole_number}),
    (
        "--max-memory",
        "the memory this server may take, e.g. 2Gi or 1536Mi (a pod's limit): the batch and "
        "queue limits are lowered to fit it, by the footprint formula; it refuses to start "
        "if the model alone does not fit (unset: no limit)",
        {},
    ),
    (
        "--frontends",
        "front-end processes serving the ports around one engine process: a number, or auto "
        "(half the cores on a GPU; 1 on a CPU, whose cores belong to the model)",
        {},
    ),
    (
        "--no-access-log",
        "no log line per request (the request metrics still count every one): for the most "
        "requests per second a front end can serve",
        {"action": "store_false", "default": None, "dest": "access_log"},
    ),
    ("--tls-cert", "PEM certificate: serve TLS (read again, with --tls-key, on SIGHUP)", {}),
    ("--tls-key", "PEM key of --tls-cert", {}),
    ("--tls-client-ca", "PEM CA: require client certificates (mutual TLS)", {}),
    ("--metrics-port", "Prometheus /metrics on this port (unset: off)", {"type": whole_number}),
    (
        "--http-port",
        "the OpenAI- and TEI-style HTTP API's port (unset: off); under --tls-cert's TLS too",
        {"type": whole_number},
    ),
    (
        "--http-insecure",
        "with TLS on, serve the HTTP port in plain text anyway (behind a proxy that "
        "terminates TLS), with a warning",
        {"action": "store_true", "default": None},
    ),
    (
        "--default-prompt-name",
        "the role of HTTP inputs whose request names none (TEI's prompt_name, OpenAI's "
        "input_type): query or passage, the e5 prefix they get",
        {"choices": ["query", "passage"]},
    ),
    (
        "--auto-truncate",
        "on HTTP, cut texts over the model's length instead of refusing them, unless a "
        "request says truncate: false (OpenAI's shape cannot say)",
        {"action": "store_true", "default": None},
    ),
    (
        "--cors-allow-origin",
        "origins a browser may call the HTTP API from: comma-separated, or * (unset: none)",
        {},
    ),
]


def field_of(flag: str, options: dict[str, Any] | None = None) -> str:
    """The setting a flag sets: its "dest" where the table names one (a flag that drops the
    field's unit suffix, --milvus-timeout for milvus_timeout_s), else the flag's own name."""
    return (options or {}).get("dest") or flag.removeprefix("--").replace("-", "_")


def variable(name: str) -> str:
    return f"EMBEDSENSE_{name.upper()}"


def default_of(name: str, defaults: ServerSettings) -> str:
    """A setting's default as --help shows it, read from ServerSettings / EngineConfig."""
    value = getattr(defaults.engine if name in ENGINE_KNOBS else defaults, name)
    return "unset" if value is None else str(value)


def environment_only(defaults: ServerSettings) -> str:
    """The settings no flag sets: their variables and defaults, for --help's epilog."""
    flagged = {field_of(flag, options) for flag, _, options in SETTINGS_FLAGS}
    names = [f.name for f in fields(ServerSettings) if f.name != "engine"] + list(ENGINE_KNOBS)
    rest = [f"{variable(n)} ({default_of(n, defaults)})" for n in names if n not in flagged]
    return "Set by the environment only (default in brackets): " + ", ".join(rest) + "."


def parser() -> argparse.ArgumentParser:
    defaults = ServerSettings()
    p = argparse.ArgumentParser(
        prog="embedsense-server",
        description=__doc__.split("\n")[0],
        epilog=environment_only(defaults),
    )
    for flag, text, options in SETTINGS_FLAGS:
        name = field_of(flag, options)
        shown = f"default: {default_of(name, defaults)}; env {variable(name)}"
        if options.get("action") == "store_false":  # --no-X: "default: True" read backwards
            on = getattr(defaults, name)
            shown = f"default: {'on' if on else 'off'}; {variable(name)}=0 turns it off"
        p.add_argument(flag, help=f"{text} [{shown}]", **options)
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines as JSON objects or as text for people [default: json; env "
        "EMBEDSENSE_LOG_FORMAT]",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="fetch a --model that is not in the local Hugging Face cache from the hub "
        f"[default: off; env {ALLOW_DOWNLOAD}=1]",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("EMBEDSENSE_LOG_FORMAT") or "json"
    if log_format not in LOG_FORMATS:
        print(
            f"embedsense-server: cannot start: EMBEDSENSE_LOG_FORMAT={log_format!r}: expected "
            f"{' or '.join(LOG_FORMATS)}",
            file=sys.stderr,
        )
        return 2
    configure_logging(json_lines=log_format == "json")
    if args.allow_download:
        os.environ[ALLOW_DOWNLOAD] = "1"
    overrides = {
        field_of(flag, options): getattr(args, field_of(flag, options))
        for flag, _, options in SETTINGS_FLAGS
    }
    try:
        settings = ServerSettings.from_env(**overrides)
        asyncio.run(serve(settings))
    except (StartupError, ValueError) as err:
        print(f"embedsense-server: cannot start: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
