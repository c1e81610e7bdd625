"""Server settings: command-line flags, falling back to EMBEDSENSE_* environment variables
(for containers), falling back to the defaults here.

Each knob has one home: what the engine computes with (model, device, dtype, threads, batch
limits) lives in EngineConfig, the rest (network, storage, limits per request) here.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from embedsense.proto import DEFAULT_PORT
from embedsense.server.api.cors import origins_as_sent
from embedsense.server.config import FLOAT16_ON_CPU, EngineConfig
from embedsense.server.index.backend import BACKENDS, MILVUS_SEARCH_CALLS, BackendSettings

PROMPT_NAMES = ("query", "passage")  # the roles HTTP requests name (TextRole's values)
# What the derived HTTP body limit allows for (http_body_limit): a character as a JSON
# escape, an input's quotes, comma and brackets, and the request's other fields.
JSON_BYTES_PER_CHAR = 6
JSON_BYTES_PER_INPUT = 8
JSON_FIELDS_BYTES = 64 * 1024

# The engine's knobs that a deployment sets from the environment and flags too.
ENGINE_KNOBS = ("model", "device", "dtype", "cpu_flags", "threads", "tokenizer_threads",
                "max_batch_tokens", "max_batch_requests", "max_wait_ms", "max_queued_tokens",
                "max_concurrent_requests", "int8", "window_stride", "interactive_max_texts",
                "interactive_max_tokens", "priority_aging_ms", "max_forward_ms",
                "query_forward_ms", "query_lane", "worker_nice", "max_queued_bulk_tokens",
                "max_concurrent_bulk_requests", "max_memory")  # fmt: skip

# The flags of the settings that have one (server/cli.py), for the messages that refuse a
# value to name where it came from; the others are set by their variable alone.
FLAGS = {"host": "--host", "port": "--port", "http_port": "--http-port",
         "metrics_port": "--metrics-port", "milvus_timeout_s": "--milvus-timeout",
         "milvus_search_calls": "--milvus-search-calls",
         "api_key": "--api-key", "dtype": "--dtype",
         "cors_allow_origin": "--cors-allow-origin"}  # fmt: skip


# How a refusal names a setting, where not by its field's name.
LABELS = {"milvus_timeout_s": "milvus timeout", "milvus_search_calls": "milvus search calls"}


def where(name: str) -> str:
    """The flag and the variable that set a field: "--port, EMBEDSENSE_PORT"."""
    variable = f"EMBEDSENSE_{name.upper()}"
    return f"{FLAGS[name]}, {variable}" if name in FLAGS else variable


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take, and how its refusal says so."""

    expected: str
    low: float
    high: float = math.inf
    above_low: bool = False  # low itself is out: a timeout of 0 would end every request
    whole: bool = False

    def holds(self, value: object) -> bool:
        kind = numbers.Integral if self.whole else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        if not math.isfinite(value):  # nan passes no comparison; inf never ends a wait
            return False
        return (value > self.low if self.above_low else value >= self.low) and value <= self.high


PORT = Range("a port number in 0-65535", 0, 65_535, whole=True)
COUNT = Range("a whole number, at least 1", 1, whole=True)
SECONDS = Range("a finite number of seconds, more than 0", 0, above_low=True)
# gRPC holds message lengths in a signed 32-bit integer: more is an OverflowError.
MESSAGE_BYTES = Range("a number of bytes in 1-2147483647", 1, 2**31 - 1, whole=True)
# Every numeric field of ServerSettings and its range (None, where a field allows it, is
# "unset" and never checked).
NUMBER_RULES = {
    "port": PORT,
    "http_port": PORT,
    "metrics_port": PORT,
    "milvus_timeout_s": SECONDS,
    "milvus_search_calls": COUNT,
    "max_message_bytes": MESSAGE_BYTES,
    "max_texts_per_request": COUNT,
    "max_text_chars": COUNT,
    "max_request_chars": COUNT,
    "max_concurrent_streams": COUNT,
    # 0: stop at once, without waiting for the calls in flight.
    "shutdown_grace_s": Range("a finite number of seconds, 0 or more", 0),
    "http_body_timeout_s": SECONDS,
    "http_max_body_bytes": COUNT,
    "http_max_body_bytes_in_flight": COUNT,
    "http_deadline_s": SECONDS,
}


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("data")
    # Where collections live: "faiss" (FAISS + SQLite in data_dir, the default) or "milvus"
    # (a milvus-lite file ending in .db, or a Milvus URL; the server then keeps no state).
    index_backend: str = "faiss"
    milvus_uri: str | None = None
    milvus_token: str | None = None
    milvus_timeout_s: float = 30.0  # milvus: the deadline of every call to Milvus, in seconds
    # milvus: search calls in flight at once per collection and search parameters; searches
    # that come meanwhile wait and go to Milvus together, as one call
    milvus_search_calls: int = MILVUS_SEARCH_CALLS
    replica: str | None = None  # this server's name in Info and logs (default: host:port)
    # When set (comma-separated for several), every call but health and reflection needs one.
    api_key: str | None = None
    # Keys in a file, one a line (blank lines skipped), kept out of `ps` and of the
    # environment; used together with api_key when both are set. Read at start-up.
    api_key_file: Path | None = None
    # Deliberate: 64 MiB carries 32k 512-dim float32 vectors or a 2048-text Embed with
    # token vectors; larger requests are refused with RESOURCE_EXHAUSTED by gRPC itself.
    max_message_bytes: int = 64 * 1024 * 1024
    max_texts_per_request: int = 2048
    max_text_chars: int = 100_000  # per text; longer texts are refused before tokenizing
    # All the texts of one request together: what the tokenizer is handed at once (its
    # per-token lists cost about 200 bytes a token), whatever the count and length limits.
    max_request_chars: int = 2_097_152
    # Upsert streams open at once, over all connections together: one more is refused
    # with RESOURCE_EXHAUSTED. Other calls, and the streams of one connection, are not capped.
    max_concurrent_streams: int = 16
    shutdown_grace_s: float = 10.0
    # TLS: a certificate and its key (PEM files); with a client CA too, mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # With TLS configured the HTTP port serves under the same certificate; this opts it out
    # (plain text, with a warning at start), for a proxy that terminates TLS in front of it.
    http_insecure: bool = False
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: any free one)
    # The OpenAI- and TEI-compatible HTTP API on this port (0: any free one; None: off).
    http_port: int | None = None
    http_body_timeout_s: float = 30.0  # a request body that takes longer is refused (408)
    # The largest HTTP body; None: derived from the input limits (http_body_limit()).
    http_max_body_bytes: int | None = None
    # Bodies being read, parsed or served at once, in bytes; beyond it a request is refused
    # with 429. None: 8 of the largest bodies.
    http_max_body_bytes_in_flight: int | None = None
    # An HTTP request's deadline, from its arrival: its queued rows are dropped after it (504).
    http_deadline_s: float = 60.0
    # The role ("query" or "passage") of HTTP inputs whose request names none (TEI's
    # prompt_name, OpenAI's input_type): TEI's --default-prompt-name. gRPC sets its own.
    default_prompt_name: str = "query"
    # Cut texts over the model's length instead of refusing them, when a request does not
    # say (TEI's --auto-truncate; OpenAI's shape has no such field, so it always applies).
    auto_truncate: bool = False
    # Origins a browser may call the HTTP API from (comma-separated, or *); unset: no CORS.
    cors_allow_origin: str | None = None
    metrics_host: str | None = None  # default: the server's host
    # One log line per request (embedsense.access). Off, for the last tenth of a busy front
    # end's capacity; the request metrics count every request either way.
    access_log: bool = True
    # Front-end processes serving the ports around one engine process (frontends/): a
    # number, or auto (half the cores on a GPU, 1 on a CPU). 1: one process, as ever.
    frontends: str = "auto"
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.index_backend not in BACKENDS:
            raise ValueError(
                f"index backend {self.index_backend!r}: expected one of {', '.join(BACKENDS)}"
            )
        if self.engine.dtype == "float16" and self.engine.device == "cpu":  # else found loaded
            raise ValueError(f"{FLOAT16_ON_CPU} ({where('dtype')})")
        # An IPv6 address may come bracketed, as in a URL: kept bare, as sockets take it.
        object.__setattr__(self, "host", _bare_host("host", self.host))
        if self.metrics_host is not None:
            object.__setattr__(self, "metrics_host", _bare_host("metrics_host", self.metrics_host))
        for name, rule in NUMBER_RULES.items():
            if (value := getattr(self, name)) is not None and not rule.holds(value):
                label = LABELS.get(name, name)
                raise ValueError(f"{label} {value}: expected {rule.expected} ({where(name)})")
        self._check_listeners_apart()
        if self.api_key is not None and not any(k.strip() for k in self.api_key.split(",")):
            # Given, and empty: an unset variable on a command line, most likely. A server
            # without keys is one without api_key; EMBEDSENSE_API_KEY="" counts as unset.
            raise ValueError(
                f"API key {self.api_key!r} ({where('api_key')}): no key in it; expected one or "
                "more keys, comma-separated (leave the setting out for a server without keys)"
            )
        frontends = self.frontends
        if frontends != "auto" and not (
            frontends.isascii() and frontends.isdigit() and int(frontends)
        ):
            raise ValueError(
                f"frontends {self.frontends!r}: expected auto or a number of processes from 1 "
                "(--frontends, EMBEDSENSE_FRONTENDS)"
            )
        if self.cors_allow_origin is not None:
            try:
                origins = origins_as_sent(self.cors_allow_origin)
            except ValueError as err:
                raise ValueError(f"CORS origin {err} ({where('cors_allow_origin')})") from None
            object.__setattr__(self, "cors_allow_origin", origins)
        if self.default_prompt_name not in PROMPT_NAMES:
            raise ValueError(
                f"default prompt name {self.default_prompt_name!r}: expected "
                f"{' or '.join(PROMPT_NAMES)}"
            )
        if self.max_request_chars < self.max_text_chars:
            raise ValueError(
                f"max_request_chars {self.max_request_chars} is below max_text_chars "
                f"{self.max_text_chars}: a text of the largest length could never be sent"
            )

    def _check_listeners_apart(self) -> None:
        """Two listeners on one port of one address: the second would fail, after the model
        loaded."""
        seen: dict[tuple[str, int], str] = {}
        for name, host in (("port", self.host), ("http_port", self.host),
                           ("metrics_port", self.metrics_host or self.host)):  # fmt: skip
            port = getattr(self, name)
            if not port:  # unset, or any free one: never the same
                continue
            if (host, port) in seen:
                other = seen[host, port]
                raise ValueError(
                    f"{other} and {name} are both {port} ({where(other)}; {where(name)}): "
                    "each listener needs a port of its own"
                )
            seen[host, port] = name

    def http_body_limit(self) -> int:
        """The largest HTTP body, in bytes: http_max_body_bytes, or derived from the input
        limits: every character of a request's texts sent as a JSON escape (\\uXXXX, six
        bytes), every input's quotes, comma and brackets, and room for the other fields."""
        if self.http_max_body_bytes is not None:
            return self.http_max_body_bytes
        return JSON_BYTES_PER_CHAR * self.max_request_chars + (
            JSON_BYTES_PER_INPUT * self.max_texts_per_request + JSON_FIELDS_BYTES
        )

    def http_bytes_in_flight(self) -> int:
        """Body bytes the HTTP server holds at once (see http_max_body_bytes_in_flight)."""
        if self.http_max_body_bytes_in_flight is not None:
            return self.http_max_body_bytes_in_flight
        return 8 * self.http_body_limit()

    @property
    def model(self) -> str:
        return self.engine.model

    @property
    def auth_required(self) -> bool:
        """Whether calls need a key (without reading the key file: start-up checks it)."""
        return self.api_key_file is not None or any(
            k.strip() for k in (self.api_key or "").split(",")
        )

    def api_keys(self) -> list[str]:
        """Every key a call may carry: api_key's (comma-separated), then api_key_file's (one a
        line). Raises ValueError naming a key file that cannot be read or holds no key."""
        keys = [key.strip() for key in (self.api_key or "").split(",") if key.strip()]
        if self.api_key_file is None:
            return keys
        where = f"API key file {self.api_key_file} (--api-key-file, EMBEDSENSE_API_KEY_FILE)"
        try:
            text = Path(self.api_key_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{where}: no such file") from None
        except OSError as err:
            raise ValueError(f"{where}: {(err.strerror or str(err)).lower()}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not UTF-8 text") from None
        from_file = [line.strip() for line in text.splitlines() if line.strip()]
        if not from_file:
            raise ValueError(f"{where}: no key in it (expected one key a line)")
        return keys + from_file

    def backend(self) -> BackendSettings:
        return BackendSettings(self.index_backend, self.data_dir, self.milvus_uri,
                               self.milvus_token, self.milvus_timeout_s,
                               self.milvus_search_calls)  # fmt: skip

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ServerSettings:
        """EMBEDSENSE_<FIELD> variables (EMBEDSENSE_PORT, EMBEDSENSE_API_KEY, and the engine's
        EMBEDSENSE_MAX_BATCH_TOKENS...), then the overrides that are not None (the command
        line's flags), engine knobs (model, device, dtype...) going to `engine`. A malformed
        value is a ValueError naming the variable."""
        environ = dict(os.environ if environ is None else environ)
        own = {f.name: f.type for f in fields(cls) if f.name != "engine"}
        engine_types = {f.name: f.type for f in fields(EngineConfig) if f.name in ENGINE_KNOBS}
        values: dict[str, object] = {}
        knobs: dict[str, object] = {}
        for name, kind in [*own.items(), *engine_types.items()]:
            raw = environ.get(f"EMBEDSENSE_{name.upper()}")
            if raw not in (None, ""):
                (knobs if name in engine_types else values)[name] = _parse(name, str(kind), raw)
        for name, value in overrides.items():
            if value is not None:
                (knobs if name in engine_types else values)[name] = value
        for name in ("data_dir", "api_key_file", "tls_cert", "tls_key", "tls_client_ca"):
            if values.get(name) is not None:
                values[name] = Path(str(values[name]))
        return cls(**values, engine=EngineConfig(**knobs))  # type: ignore[arg-type]


def _bare_host(name: str, host: str) -> str:
    """`host` without the brackets an IPv6 address may be written in; ValueError naming the
    setting for one that is no address at all."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare.strip() or bare != bare.strip() or "[" in bare or "]" in bare:
        raise ValueError(
            f"{name} {host!r}: expected a host name or an IPv4 or IPv6 address, an IPv6 one "
            f"bracketed or not (0.0.0.0 or :: for every address) ({where(name)})"
        )
    return bare


def _parse(name: str, kind: str, raw: str) -> object:
    """A variable's value as its field's type. Numbers in plain digits: int() would read
    "5_0051" as 50051, and "+80" as 80."""
    variable = f"EMBEDSENSE_{name.upper()}={raw!r}"
    if "bool" in kind:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{variable}: expected 1/0, true/false or yes/no")
        return raw.lower() in ("1", "true", "yes")
    if "str" in kind:
        return raw
    if "int" in kind:
        if not re.fullmatch(r"-?[0-9]+", raw.strip()):
            raise ValueError(f"{variable}: expected a whole number in plain digits (int)")
        return int(raw)
    if "float" in kind:
        try:
            if "_" in raw:
                raise ValueError(raw)
            return float(raw)
        except ValueError:
            raise ValueError(f"{variable}: expected a number (float)") from None
    return raw
