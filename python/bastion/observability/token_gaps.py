"""The inter-token latency histogram, kept in plain counters and exposed to the Prometheus scrape.

Every streamed message adds to ``bastion_inter_token_latency_seconds``. Through an OpenTelemetry histogram that
was one SDK ``record`` per token (a measurement object, attribute hashing, the reader storage's lookup: 6–8 µs), and
issue 19's profile of the front end on the real engine at concurrency 16 found it at about 10 % of the process's
active CPU samples. Here a message's ``n`` gaps are one bucket search and two additions under a lock (0.9 µs a
message through ``Metrics.inter_token``, measured), and the scrape reads a snapshot.

The series are those the OpenTelemetry Prometheus exporter wrote for the instrument: the same name, help, ``model``
label, bucket bounds (a gap equal to a bound counts in that bound's bucket, as in both OpenTelemetry and Prometheus)
and ``_count``/``_sum``. With an OTLP metrics push configured the OpenTelemetry instrument is kept instead (the push
has no way to take pre-aggregated buckets), so each configuration has exactly one source for the series.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

NAME = "bastion_inter_token_latency_seconds"
HELP = "Time between streamed tokens"


class GapHistogram(Collector):
    """Per-model cumulative histogram of inter-token gaps; ``observe`` from any thread, ``collect`` on a scrape."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError("bounds: must be strictly increasing")
        self._lock = threading.Lock()
        # model -> (per-bucket counts, the last one above every bound; sum of the gaps)
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, model: str, gap: float, n: int = 1) -> None:
        """``n`` gaps of ``gap`` seconds each (a message carrying ``n`` tokens shares the time since the last)."""
        if n <= 0:
            return
        i = bisect_left(self._bounds, gap)
        with self._lock:
            counts = self._counts.get(model)
            if counts is None:
                counts = self._counts[model] = [0] * (len(self._bounds) + 1)
                self._sums[model] = 0.0
            counts[i] += n
            self._sums[model] += gap * n

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            snapshot = [(model, list(counts), self._sums[model]) for model, counts in self._counts.items()]
        family = HistogramMetricFamily(NAME, HELP, labels=["model"])
        les = [str(b) for b in self._bounds] + ["+Inf"]
        for model, counts, total in snapshot:
            cumulative, buckets = 0, []
            for le, count in zip(les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric([model], buckets, total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(NAME, HELP, labels=["model"])
