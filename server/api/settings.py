"""Server settings: command-line flags, falling back to EMBEDSENSE_* environment variables
(for containers), falling back to the defaults here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from embedsense.server.config import EngineConfig


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("data")
    model: str = "multilingual-e5-small"
    api_key: str | None = None  # when set, every call but health and reflection needs it
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    # Deliberate: 64 MiB carries 32k 512-dim float32 vectors or a 2048-text Embed with
    # token vectors; larger requests are refused with RESOURCE_EXHAUSTED by gRPC itself.
    max_message_bytes: int = 64 * 1024 * 1024
    max_texts_per_request: int = 2048
    shutdown_grace_s: float = 10.0
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ServerSettings:
        """EMBEDSENSE_<FIELD> variables (EMBEDSENSE_PORT, EMBEDSENSE_API_KEY...), then the
        overrides that are not None (the command line's flags)."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "engine":
                continue
            raw = environ.get(f"EMBEDSENSE_{f.name.upper()}")
            if raw not in (None, ""):
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"]))
        settings = cls(**values)  # type: ignore[arg-type]
        engine = EngineConfig(
            model=settings.model, device=settings.device, dtype=settings.dtype,
            threads=settings.threads,
        )  # fmt: skip
        return cls(**{**values, "engine": engine})  # type: ignore[arg-type]


_INTS = {"port", "threads", "max_message_bytes", "max_texts_per_request"}


def _parse(name: str, raw: str) -> object:
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"EMBEDSENSE_{name.upper()}={raw!r}: expected an integer") from None
    if name == "shutdown_grace_s":
        return float(raw)
    return raw
