"""The index's metrics on /metrics: each collection's size, read for each scrape with a
deadline, and on Milvus its search counters, kept in this process and served in every scrape.

Reading the sizes asks the index (on Milvus, a count per collection over the network). A scrape
that waited on a stalled index would fail whole, the engine's metrics with it, when an
operator needs them most: so the reading runs in a thread of its own, and a scrape waits for
it at most READ_WAIT_S. Past that, or on an error, the scrape leaves the sizes out
and says so with `embedsense_index_up 0`. The reading goes on; a scrape while it does waits
for that one rather than start another (a stalled index holds one thread, not one per
scrape), and one that finds it finished, unserved, serves it and starts the next, so an index
slower than READ_WAIT_S but answering is reported every scrape, one reading behind. A
failed reading is served once, by the scrape that waited for it, and never late: the next
scrape reads afresh, so the first after the index is back says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from embedsense.server.index import IndexBackend

if TYPE_CHECKING:  # pymilvus is imported only where a Milvus is used
    from embedsense.server.index.milvus.coalesce import SearchStats

log = logging.getLogger(__name__)

READ_WAIT_S = 3.0  # under Prometheus' default scrape timeout (10 s), with room for the rest
KEPT_S = 300.0  # a finished reading no scrape has served is served up to this old


class IndexMetrics:
    """A Prometheus collector of the index's metrics (registered by Metrics.watch)."""

    def __init__(self, catalog: IndexBackend) -> None:
        self.catalog = catalog
        self._reading: Future[list[Metric]] | None = None
        self._served = True  # whether a scrape has had the last reading
        self._ended_at = 0.0  # when the last reading ended (time.monotonic())
        self._lock = threading.Lock()  # scrapes may come at once
        # The collections the last reading found: a collection another replica dropped
        # stays open in this process, and its counters go with it from the scrapes.
        self._listed: frozenset[str] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            reading = self._reading
            fresh = time.monotonic() - self._ended_at < KEPT_S
            ended = reading is not None and reading.done()
            if ended and not self._served and fresh and reading.exception() is None:
                self._start()  # the next scrape's: this one serves the reading that ended
            elif reading is None or ended:  # a late failure says no more than up 0 did
                reading = self._start()
            # else: one is under way (a slow or stalled index): wait for that one
        families, had_it = None, True  # had_it: answered or failed, not still under way
        try:
            families = reading.result(timeout=READ_WAIT_S)
        except FutureTimeout:
            log.warning("the index did not answer this scrape in %.0f s: its sizes are left "
                        "out (embedsense_index_up 0)", READ_WAIT_S)  # fmt: skip
            had_it = False
        except Exception as err:  # the index's own errors, whatever the backend
            log.warning("the index's sizes are left out of this scrape: %s", err)
        if had_it:
            with self._lock:
                if reading is self._reading:
                    self._served = True
        yield GaugeMetricFamily(
            "embedsense_index_up",
            f"1 when the index answered a reading of its sizes within {READ_WAIT_S:g} s",
            value=0 if families is None else 1,
        )
        yield from families or ()
        search_stats = getattr(self.catalog, "search_stats", None)  # the milvus backend's
        if search_stats is not None:
            listed = self._listed
            yield from search_counters(
                {n: s for n, s in search_stats().items() if listed is None or n in listed}
            )

    def _start(self) -> Future[list[Metric]]:
        """A reading in a thread of its own (a daemon: a stalled one holds no exit)."""
        future: Future[list[Metric]] = Future()
        self._reading, self._served = future, False
        threading.Thread(
            target=self._run, args=(future,), name="embedsense-index-metrics",
            daemon=True,
        ).start()  # fmt: skip
        return future

    def _run(self, future: Future[list[Metric]]) -> None:
        try:
            families, error = self._read(), None
        except BaseException as err:  # handed to the scrape that waits
            families, error = [], err
        with self._lock:  # before the result: a scrape that sees it done sees when
            self._ended_at = time.monotonic()
        if error is None:
            future.set_result(families)
        else:
            future.set_exception(error)

    def _read(self) -> list[Metric]:
        documents = GaugeMetricFamily("embedsense_collection_documents", "documents stored",
                                      labels=["collection"])  # fmt: skip
        vectors = GaugeMetricFamily("embedsense_collection_index_vectors",
                                    "vectors in the FAISS index, dead ones included",
                                    labels=["collection"])  # fmt: skip
        names = self.catalog.names()
        for name in names:
            try:
                collection = self.catalog.get(name)
                count, in_index = collection.count(), collection.index_vectors()
            except KeyError:  # dropped meanwhile (CollectionNotFound is a KeyError)
                continue
            documents.add_metric([name], count)
            vectors.add_metric([name], in_index)
        self._listed = frozenset(names)
        return [documents, vectors]


def search_counters(stats: Mapping[str, SearchStats]) -> list[Metric]:
    """Milvus: each collection's searches, the calls made for them (searches / calls is how
    many a call merged) and their waits for a turn, to tune --milvus-search-calls by."""
    by_collection = ["collection"]
    searches = CounterMetricFamily(
        "embedsense_milvus_searches", "searches asked of Milvus", labels=by_collection
    )
    calls = CounterMetricFamily(
        "embedsense_milvus_search_calls", "Milvus calls made for them", labels=by_collection
    )
    waits = CounterMetricFamily(
        "embedsense_milvus_search_wait_seconds", "time searches waited for a turn",
        labels=by_collection,
    )  # fmt: skip
    for name, counted in sorted(stats.items()):
        searches.add_metric([name], counted.searches)
        calls.add_metric([name], counted.calls)
        waits.add_metric([name], counted.wait_seconds)
    return [searches, calls, waits]
