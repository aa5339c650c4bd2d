"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "Measured", "CONTENT_TYPE_LATEST"]

# The routes requests are labelled with; anything else is "other", so a scanner cannot grow the label set.
ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/models", "/health", "/ready", "/metrics")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fastclip_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("fastclip_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Counter("fastclip_inputs", "Inputs embedded by model, tower and outcome",
                              ["model", "tower", "outcome"], registry=r)
        self.batch_size = Histogram("fastclip_batch_size", "Inputs per model run (dynamic batching)",
                                    ["model", "tower"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fastclip_batch_seconds", "Time of one batch: decode + inference",
                                       ["model", "tower"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("fastclip_queue_depth", "Inputs waiting for a worker", ["model", "tower"],
                                 registry=r)
        self.rejected = Counter("fastclip_rejected", "Requests refused before any work, by reason", ["reason"],
                                registry=r)
        self.in_flight = Gauge("fastclip_requests_in_flight", "HTTP requests being handled", registry=r)

    def route(self, path: str) -> str:
        return path if path in ROUTES else "other"

    def watch_queue(self, model: str, tower: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model, tower).set_function(depth)

    def on_batch(self, model: str, tower: str) -> Callable[[int, float], None]:
        size = self.batch_size.labels(model, tower)
        seconds = self.batch_seconds.labels(model, tower)

        def record(n: int, elapsed: float) -> None:
            size.observe(n)
            seconds.observe(elapsed)

        return record

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Measured:
    """ASGI wrapper counting requests by route and status and timing them (status 499: the client left first)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 499
        started = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = 500
            raise
        finally:
            self.metrics.in_flight.dec()
            route = self.metrics.route(scope.get("path", ""))
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
