"""Prometheus metrics of the gateway, on a registry of its own (one per app).

Under `--workers N` every process writes its values to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus-client's multiprocess mode, chosen by that variable when the process starts) and any
front's `/metrics` reads them all: one view whichever front answers. Gauges say how processes
combine: the sum of the live ones' queues, the maximum of their flags.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "focalserve_request_duration_seconds", "HTTP request latency.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "focalserve_batch_size", "Items per backend call.", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "focalserve_queue_depth", "Items waiting in a batcher.", ["model"], registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "focalserve_rejected_total", "Items refused because a queue was full.", ["model"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "focalserve_store_errors_total", "Store calls that failed beneath the gateway (disk, database).",
            ["code"], registry=self.registry,
        )
        self.store_failing = Gauge(
            "focalserve_store_failing", "1 while that part beneath the store fails (storage: writes, database: calls).",
            ["part"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.warmup_seconds = Gauge(
            "focalserve_warmup_seconds", "Time each model spent warming up before the gateway served.", ["model"],
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.condition_cache = Counter(
            "focalserve_condition_cache_total", "Condition cache lookups.", ["model", "result"],
            registry=self.registry,
        )
        self.media_fetches = Counter(
            "focalserve_media_fetches_total", "Image URL fetches by outcome (ok, refused, failed).", ["outcome"],
            registry=self.registry,
        )
        self.media_fetch_bytes = Counter(
            "focalserve_media_fetch_bytes_total", "Bytes read from image URLs.", registry=self.registry,
        )
        self.media_refusals = Counter(
            "focalserve_media_refusals_total", "Image URLs refused, by the rule that refused them.", ["reason"],
            registry=self.registry,
        )

        self.quota_leases = Counter(
            "focalserve_quota_leases_total", "Shares of a key's quota taken from the store (one write each).",
            ["quota"], registry=self.registry,
        )
        self.rate_limited = Counter(
            "focalserve_rate_limited_total", "Requests refused with 429, by the limit they met.", ["quota"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text format of this process's metrics, or of every process's under `--workers N`."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
