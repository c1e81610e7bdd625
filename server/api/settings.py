"""Server settings: command-line flags, falling back to EMBEDSENSE_* environment variables
(for containers), falling back to the defaults here.

Each knob has one home: what the engine computes with (model, device, dtype, threads, batch
limits) lives in EngineConfig, the rest (network, storage, limits per request) here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from embedsense.server.config import EngineConfig
from embedsense.server.index.backend import BACKENDS, BackendSettings

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


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("data")
    # Where collections live: "faiss" (FAISS + SQLite in data_dir, the default) or "milvus"
    # (a milvus-lite file ending in .db, or a Milvus URL; the server then keeps no state).
    index_backend: str = "faiss"
    milvus_uri: str | None = None
    milvus_token: str | None = None
    milvus_timeout_s: float = 30.0  # milvus: the deadline of every call to Milvus, in seconds
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
    max_concurrent_streams: int = 16  # Upsert streams at once (and per connection)
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
        for name in ("port", "http_port", "metrics_port"):
            if (port := getattr(self, name)) is not None and not 0 <= port <= 65_535:
                raise ValueError(
                    f"{name} {port}: expected a port number in 0-65535 "
                    f"(--{name.replace('_', '-')}, EMBEDSENSE_{name.upper()})"
                )
        if not self.milvus_timeout_s > 0:
            raise ValueError(
                f"milvus timeout {self.milvus_timeout_s}: expected a positive number of "
                "seconds (--milvus-timeout, EMBEDSENSE_MILVUS_TIMEOUT_S)"
            )
        if self.frontends != "auto" and not (self.frontends.isdigit() and int(self.frontends)):
            raise ValueError(
                f"frontends {self.frontends!r}: expected auto or a number of processes from 1 "
                "(--frontends, EMBEDSENSE_FRONTENDS)"
            )
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
                               self.milvus_token, self.milvus_timeout_s)  # fmt: skip

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


def _parse(name: str, kind: str, raw: str) -> object:
    variable = f"EMBEDSENSE_{name.upper()}={raw!r}"
    if "bool" in kind:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{variable}: expected 1/0, true/false or yes/no")
        return raw.lower() in ("1", "true", "yes")
    for number in (int, float):
        if number.__name__ in kind and "str" not in kind:
            try:
                return number(raw)
            except ValueError:
                raise ValueError(f"{variable}: expected a number ({number.__name__})") from None
    return raw
