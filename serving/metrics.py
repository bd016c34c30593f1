"""Prometheus metrics of one server, in a registry of its own (several servers may share a process).

Every series is listed in `SERIES` (and documented in the README's Operations section; a test holds
the three equal). Latencies are in seconds. `serve_http(port, host)` exposes the registry as the text
format at `/metrics`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from recsys.fast import StateCache

logger = logging.getLogger(__name__)

# 0.5 ms .. 10 s: a cache-hit Recommend takes a few ms on CPU, a cold Redis call up to the socket timeout
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# (name as exposed, type, labels): the contract with dashboards and alerts.
SERIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("recsys_grpc_requests_total", "counter", ("service", "method", "code")),
    ("recsys_grpc_request_duration_seconds", "histogram", ("service", "method")),
    ("recsys_grpc_requests_in_flight", "gauge", ()),
    ("recsys_stage_duration_seconds", "histogram", ("method", "stage")),
    ("recsys_user_cache_lookups_total", "counter", ("result",)),
    ("recsys_user_cache_entries", "gauge", ()),
    ("recsys_state_cache_lookups_total", "counter", ("result",)),
    ("recsys_state_cache_entries", "gauge", ()),
    ("recsys_degraded_responses_total", "counter", ("method", "reason")),
    ("recsys_model_info", "gauge", ("version", "created_at")),
    ("recsys_model_reloads_total", "counter", ("result",)),
    ("recsys_model_batch_size", "histogram", ()),
    ("recsys_gc_pause_seconds", "histogram", ("generation",)),
)
STAGES = ("queue", "feature_fetch", "batch_wait", "retrieval_and_ranking", "ranking", "feature_write", "serialization")
DEGRADED_REASONS = ("degraded_cache", "degraded_fallback")
RELOAD_RESULTS = ("ok", "unchanged", "failed")


class Metrics:
    """The series of one server. Thread-safe (prometheus_client's own locks)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recsys_grpc_requests", "Finished gRPC calls by method and status code.", ["service", "method", "code"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "recsys_grpc_request_duration_seconds",
            "Wall time of a gRPC call in the server, from handler entry to response (errors included).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "recsys_grpc_requests_in_flight", "gRPC calls being handled now (queued or computing).", registry=r
        )
        self.stages = Histogram(
            "recsys_stage_duration_seconds",
            "Time per request stage: queue (waiting for a worker), feature_fetch (store read, cache hits "
            "excluded), batch_wait (waiting for the model thread, gathering included), retrieval_and_ranking "
            "(Recommend's model call), ranking (Rank's model call), "
            "feature_write (RecordEvents' store write), serialization (building the response message).",
            ["method", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "recsys_model_batch_size",
            "Calls computed together by the model thread (one recommend_batch; Rank calls count 1).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.cache_lookups = Counter(
            "recsys_user_cache_lookups", "User-state cache lookups: hit (fresh entry) or miss.", ["result"], registry=r
        )
        self.cache_entries = Gauge("recsys_user_cache_entries", "Users held in the user-state cache.", registry=r)
        self.degraded = Counter(
            "recsys_degraded_responses",
            "Answers given while the feature store was unreachable, by method and reason.",
            ["method", "reason"],
            registry=r,
        )
        self.model = Info("recsys_model", "The model version being served (value always 1).", registry=r)
        self.reloads = Counter(
            "recsys_model_reloads",
            "Model reload attempts: ok (swapped), unchanged (already served), failed (refused; old model kept).",
            ["result"],
            registry=r,
        )
        r.register(GC_PAUSES)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        # Zero-valued series exist from the start, so rate() and alerts work before the first event.
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result)
        for method in ("Recommend", "Rank"):
            for reason in DEGRADED_REASONS:
                self.degraded.labels(method=method, reason=reason)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)

    @contextmanager
    def stage(self, method: str, stage: str) -> Iterator[None]:
        """Time a block as `stage` of `method` (recorded only when the block completes)."""
        start = time.perf_counter()
        yield
        self.stages.labels(method=method, stage=stage).observe(time.perf_counter() - start)

    def observe_stage(self, method: str, stage: str, seconds: float) -> None:
        self.stages.labels(method=method, stage=stage).observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self.cache_lookups.labels(result="hit" if hit else "miss").inc()

    def track_cache_size(self, size: Callable[[], int]) -> None:
        self.cache_entries.set_function(lambda: float(size()))

    def track_state_cache(self, cache: Callable[[], StateCache | None]) -> None:
        """Expose the served model's ranking-state cache (`recsys.fast.StateCache`), read at scrape time."""
        self.registry.register(_StateCacheCollector(cache))

    def set_model(self, version: str, created_at: str) -> None:
        self.model.info({"version": version, "created_at": created_at})

    def request_done(self, service: str, method: str, code: str, seconds: float) -> None:
        self.requests.labels(service=service, method=method, code=code).inc()
        self.latency.labels(service=service, method=method).observe(seconds)


class _StateCacheCollector(Collector):
    """The ranking-state cache belongs to the loaded model: a reload brings an empty one, so its lookup
    counter restarts from zero (a counter reset, which rate() handles)."""

    def __init__(self, cache: Callable[[], StateCache | None]) -> None:
        self._cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self._cache()
        lookups = CounterMetricFamily(
            "recsys_state_cache_lookups",
            "Ranking-state cache lookups of the served model, per user row: hit or miss (0 when it is off).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], cache.hits if cache is not None else 0)
        lookups.add_metric(["miss"], cache.misses if cache is not None else 0)
        yield lookups
        yield GaugeMetricFamily(
            "recsys_state_cache_entries", "Users held in the served model's ranking-state cache.",
            value=len(cache) if cache is not None else 0,
        )  # fmt: skip


# 0.1 ms .. 1 s: a young collection takes well under a millisecond; a full one walks every tracked object
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Process-wide, as `gc.callbacks` and the pauses are (every server in the process waits them out): one
# histogram, in no registry of its own, that every server's registry also exposes (README, Speed: these
# pauses made the tail at concurrency 16 until `serving.reload.freeze_heap`).
GC_PAUSES = Histogram(
    "recsys_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector in this process, by generation (2 = a full collection).",
    ["generation"],
    buckets=GC_BUCKETS,
    registry=None,
)


class _GCPauseRecorder:
    """The `gc.callbacks` hook: times each collection into GC_PAUSES. The collector runs callbacks under the
    GIL, one collection at a time and never nested, so one start time is enough; the children are bound
    once, so a callback takes no lock but their values'."""

    def __init__(self) -> None:
        self._by_generation = [GC_PAUSES.labels(generation=str(g)) for g in range(3)]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self._by_generation[min(2, max(0, info.get("generation", 2)))].observe(time.perf_counter() - self._start)


gc.callbacks.append(_GCPauseRecorder())


class MetricsHTTPServer:
    """`/metrics` over HTTP on a daemon thread; `close()` stops it and frees the port."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
