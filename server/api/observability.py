"""What the server tells its operators: Prometheus metrics on their own port, one JSON log
line per request with a request id, and never the text of a request at the default level."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from embedsense.server.api.index_metrics import IndexMetrics
from embedsense.server.engine import BatchReport, Engine
from embedsense.server.index import IndexBackend

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("embedsense.access")

# Finer between 100 ms and 2 s, where the latency aims of interactive calls lie, so that the
# percentiles read from the buckets are close.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
LATENCY_BUCKETS += (0.75, 1, 1.5, 2, 2.5, 5, 10, 30)
# Time in the queue, finer where the priorities' targets lie (a query's tens of milliseconds,
# bulk work's seconds), so that percentiles read from the buckets are close.
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4)
QUEUE_BUCKETS += (0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 30)


class Metrics:
    """One registry per server, so that several servers in one process stay apart.
    access_log: one log line per request (embedsense.access); off, the counts and latencies
    above still count every request."""

    def __init__(self, access_log: bool = True) -> None:
        self.access_log = access_log
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "embedsense_requests", "RPCs by method and status code", ["rpc", "code"], registry=r
        )
        self.latency = Histogram(
            "embedsense_request_seconds",
            "RPC latency",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "embedsense_batch_rows",
            "texts or windows per forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "embedsense_batch_tokens",
            "padded tokens per forward",
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384),
            registry=r,
        )
        self.padding = Histogram(
            "embedsense_batch_padding_fraction",
            "padding per forward",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9),
            registry=r,
        )
        self.queue_seconds = Histogram(
            "embedsense_queue_seconds",
            "arrival to forward, per row, by its request's priority",
            ["priority"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "embedsense_rows", "rows computed, by priority", ["priority"], registry=r
        )
        self.model_seconds = Histogram(
            "embedsense_model_seconds", "time in one forward", buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_load = Gauge(
            "embedsense_model_load_seconds", "time to load the model", registry=r
        )
        self._http = None
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        self.exposed = _Merged(self.registry, self._sources)

    def add_source(self, families: Callable[[], Iterable[Metric]]) -> None:
        """Another process's metrics (a front end's), summed with these on every scrape."""
        self._sources.append(families)

    async def page(self) -> bytes:
        """/metrics' text, in a thread: collecting waits for the index's sizes (up to
        index_metrics.READ_WAIT_S) and for other processes' metrics."""
        return await asyncio.to_thread(generate_latest, self.exposed)

    def watch(self, engine: Engine, catalog: IndexBackend) -> None:
        """Follow the engine's batches, and read queue and index sizes on every scrape."""
        engine.add_observer(self.on_batch)
        self.model_load.set(engine.model.load_seconds)
        depth = Gauge("embedsense_engine_queue_depth", "rows waiting for the model",
                      registry=self.registry)  # fmt: skip
        depth.set_function(lambda: engine.queue_depth)
        self.registry.register(_Engine(engine))
        self.registry.register(IndexMetrics(catalog))

    def on_batch(self, report: BatchReport) -> None:
        self.batch_rows.observe(report.rows)
        self.batch_tokens.observe(report.padded_tokens)
        self.padding.observe(report.padding_fraction)
        self.model_seconds.observe(report.model_seconds)
        for seconds, priority in zip(report.queue_seconds, report.priorities, strict=True):
            self.queue_seconds.labels(priority.label).observe(seconds)
            self.rows.labels(priority.label).inc()

    def observe_request(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc).observe(seconds)
        if self.access_log:
            access_log.info(
                "request", extra={"rpc": rpc, "code": code, "ms": round(seconds * 1000, 2)}
            )

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on its own port; the port it listens on."""
        self._http, _ = start_http_server(port, addr=host, registry=self.exposed)
        return self._http.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _Engine:
    """Counters the engine keeps, read when scraped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        s = self.engine.stats
        for name, value, text in (
            ("embedsense_engine_refused", s.refused, "requests refused at admission"),
            ("embedsense_engine_skipped_cancelled", s.skipped_cancelled, "rows dropped: cancelled"),
            ("embedsense_engine_skipped_expired", s.skipped_expired, "rows dropped: deadline"),
            ("embedsense_engine_real_tokens", s.real_tokens, "tokens computed (no padding)"),
            ("embedsense_engine_lane_batches", s.lane_batches,
             "forwards of queries run beside the worker's (the query lane)"),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, text, value=value)
        queued = GaugeMetricFamily(
            "embedsense_engine_queued_rows", "rows waiting, by priority", labels=["priority"]
        )
        refused = GaugeMetricFamily(
            "embedsense_engine_refused_by_priority",
            "requests refused at admission, by priority",
            labels=["priority"],
        )
        for label, rows in self.engine.queued_rows().items():
            queued.add_metric([label], rows)
            refused.add_metric([label], s.refused_by_priority[label])
        yield queued
        yield refused


class _Merged(CollectorRegistry):
    """A registry's metrics and other processes', each sample summed over them by name and
    labels (counters, histograms and gauges alike; a `_created` time: the earliest)."""

    def __init__(self, own: CollectorRegistry, sources: list[Callable[[], Iterable[Metric]]]):
        super().__init__()
        self._own = own
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        if not self._sources:
            yield from self._own.collect()
            return
        families: dict[str, Metric] = {}
        samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for family in itertools.chain(self._own.collect(), *(get() for get in self._sources)):
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                samples[family.name] = {}
            summed = samples[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = summed.get(key)
                if seen is None:
                    summed[key] = sample
                elif sample.name.endswith("_created"):
                    summed[key] = seen._replace(value=min(seen.value, sample.value))
                else:
                    summed[key] = seen._replace(value=seen.value + sample.value)
        for name, family in families.items():
            family.samples = list(samples[name].values())
            yield family


# What every LogRecord carries; anything else on a record came from a log call's `extra`.
# asctime: set on the record by a text formatter, never a field of its own.
STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed in `extra` (rpc, code, ms for an access line)."""
    return {k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id, and the
    structured fields a log call passes in `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        line.update(extra_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """A line for people, with what JsonFormatter's line holds: time, level, logger, message,
    then the structured fields and the request id as key=value (the id only within a
    request: "-" says nothing)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # Here, not in format(): the fields stay on the first line, before any traceback.
        fields = extra_fields(record)
        if (rid := request_id.get()) != "-":
            fields["request_id"] = rid
        pairs = "".join(f" {key}={_text_value(value)}" for key, value in fields.items())
        return super().formatMessage(record) + pairs


def _text_value(value: Any) -> str:
    """As it is, or quoted as JSON when it has spaces, quotes or '=' that would blur the line."""
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure_logging(json_lines: bool = True, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# A caller's request id is echoed in headers and logs: printable ASCII only, no spaces.
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")


def new_request_id(metadata: Any) -> str:
    """The caller's x-request-id when it sent a usable one (for tracing across services:
    printable ASCII, at most 64 characters kept), else new."""
    given = dict(metadata or ()).get("x-request-id", "")
    if given and REQUEST_ID.fullmatch(given[:64]):
        return given[:64]
    return uuid.uuid4().hex[:16]
