"""The index's metrics on /metrics: each collection's size and, on Milvus, its search
counters, read for each scrape with a deadline.

Reading them asks the index (on Milvus, a count per collection over the network). A scrape
that waited on a stalled index would fail whole, the engine's metrics with it, when an
operator needs them most: so the reading runs in a thread of its own, and a scrape waits for
it at most READ_WAIT_S. Past that, or on an error, the scrape leaves the index's metrics out
and says so with `embedsense_index_up 0`; the reading goes on, and the next scrape waits for
that one rather than start another, so a stalled index holds one thread, not one per scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from embedsense.server.index import IndexBackend

log = logging.getLogger(__name__)

READ_WAIT_S = 3.0  # under Prometheus' default scrape timeout (10 s), with room for the rest


class IndexMetrics:
    """A Prometheus collector of the index's metrics (registered by Metrics.watch)."""

    def __init__(self, catalog: IndexBackend) -> None:
        self.catalog = catalog
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="embedsense-index-metrics")
        self._reading: Future[list[Metric]] | None = None
        self._lock = threading.Lock()  # scrapes may come at once

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._reading is None or self._reading.done():
                self._reading = self._reader.submit(self._read)
            reading = self._reading
        try:
            families = reading.result(timeout=READ_WAIT_S)
        except FutureTimeout:
            log.warning("the index did not answer this scrape in %.0f s: its metrics are left "
                        "out (embedsense_index_up 0)", READ_WAIT_S)  # fmt: skip
            families = None
        except Exception as err:  # the index's own errors, whatever the backend
            log.warning("the index's metrics are left out of this scrape: %s", err)
            families = None
        yield GaugeMetricFamily(
            "embedsense_index_up",
            f"1 when the index answered this scrape's reading within {READ_WAIT_S:g} s",
            value=0 if families is None else 1,
        )
        yield from families or ()

    def _read(self) -> list[Metric]:
        documents = GaugeMetricFamily("embedsense_collection_documents", "documents stored",
                                      labels=["collection"])  # fmt: skip
        vectors = GaugeMetricFamily("embedsense_collection_index_vectors",
                                    "vectors in the FAISS index, dead ones included",
                                    labels=["collection"])  # fmt: skip
        # Milvus: searches, the calls made for them (searches / calls is how many a call
        # merged) and their waits for a turn, to tune --milvus-search-calls by.
        milvus = self.catalog.kind == "milvus"
        by_collection = ["collection"]
        searches = CounterMetricFamily(
            "embedsense_milvus_searches", "searches asked of Milvus", labels=by_collection
        )
        calls = CounterMetricFamily(
            "embedsense_milvus_search_calls", "Milvus calls made for them", labels=by_collection
        )
        waits = CounterMetricFamily(
            "embedsense_milvus_search_wait_seconds",
            "time searches waited for a turn",
            labels=by_collection,
        )
        for name in self.catalog.names():
            try:
                collection = self.catalog.get(name)
            except KeyError:  # dropped meanwhile
                continue
            documents.add_metric([name], collection.count())
            vectors.add_metric([name], collection.index_vectors())
            if milvus:
                stats = collection.search_stats()
                searches.add_metric([name], stats.searches)
                calls.add_metric([name], stats.calls)
                waits.add_metric([name], stats.wait_seconds)
        return [documents, vectors, *((searches, calls, waits) if milvus else ())]

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
