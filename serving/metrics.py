"""Prometheus metrics of a recommender replica (GET /metrics; each replica reports its own)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.watcher import SwapRecord

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """Request counts and latencies per endpoint, the served version, swaps and history lag."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamrec_requests", "Requests answered, by endpoint and HTTP status.", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "streamrec_request_seconds", "Time inside the replica per request.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_version = Gauge(
            "streamrec_model_version", "Registered version being served.", ["model"], registry=self.registry
        )
        self.swaps = Counter("streamrec_model_swaps", "Model versions swapped in since start.", registry=self.registry)
        self.last_swap_seconds = Gauge(
            "streamrec_model_load_seconds", "Load time of the last version swapped in.", registry=self.registry
        )
        self.history_lag = Gauge(
            "streamrec_history_lag_records", "Records of a partition the online history has not applied yet.",
            ["partition"], registry=self.registry,
        )  # fmt: skip

    def observe(self, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=status).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def swapped(self, swap: SwapRecord, model: str = "retrieval") -> None:
        self.model_version.labels(model=model).set(float(swap.to_version))
        self.last_swap_seconds.set(swap.load_seconds)
        if swap.from_version is not None:
            self.swaps.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
