"""Prometheus metrics, in a registry of each app's own (tests start several apps in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "captioner_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "captioner_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "captioner_batch_size", "images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_depth = Gauge("captioner_queue_depth", "requests waiting for the inference thread", registry=self.registry)
        self.stage_seconds = Histogram(
            "captioner_stage_seconds", "inference time per batch by stage", ["stage"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
