"""Prometheus metrics of a recommender replica (GET /metrics; each replica reports its own)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.deltas import AppliedDelta
from serving.watcher import SwapRecord

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
DELTA_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)  # the target: 5 s p95


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
        self.delta_sequence = Gauge(
            "streamrec_model_delta_sequence", "The last model delta applied to the served version (0: none).",
            registry=self.registry,
        )  # fmt: skip
        self.delta_visible = Histogram(
            "streamrec_model_delta_publish_to_served_seconds",
            "From a model delta's publish (its published_ms) to this replica serving it.",
            buckets=DELTA_BUCKETS, registry=self.registry,
        )  # fmt: skip
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

    def delta_applied(self, applied: AppliedDelta) -> None:
        self.delta_sequence.set(applied.sequence)
        self.delta_visible.observe(max(0.0, (applied.applied_ms - applied.published_ms) / 1000))

    def render(self) -> bytes:
        return generate_latest(self.registry)
