"""What one request, and all of them together, may cost the server; checked before any work is queued.

The defaults are sized for the model this project benchmarks (ViT-B/32: ~40 photos/s on 2 CPU cores,
~1000/s on one GPU) and for what clients send:

* max_body_bytes 32 MiB: a 4 MP camera JPEG is ~1.5-3 MB, ~2-4 MB as base64; 32 MiB carries ~10 of them
  inline. The body is read as a stream against this counter and never buffered past it (413).
* max_inputs 256 per request: OpenAI allows 2048 texts, but 2048 photos are ~50 s of CPU; a client that
  batches 256 at a time loses nothing, and the queue below stays a few times a request's size.
* max_queue 1024 inputs per tower: ~25 s of images on 2 CPU cores, ~1 s on a GPU. Past it the server
  answers 503 + Retry-After at once instead of making callers wait past their own timeouts.
* max_inflight_bytes 256 MiB: request bodies held at once (being read, or queued as image bytes). Bodies
  are the memory a flood of large requests costs; this caps it where max_queue (counted in inputs) cannot.
* max_batch 32 images / 128 texts, max_wait 5 ms: batch 32 reaches the model's throughput on CPU; text
  runs are cheap, so more of them merge. 5 ms is small beside one image's ~25 ms of work.
* body_timeout 60 s: a body not fully received by then answers 408 (a 32 MiB body at 1 MB/s takes 32 s), so a
  client trickling bytes cannot hold its share of max_inflight_bytes for ever.
* max_connections 1000: uvicorn answers 503 past that many connections and requests at once.
* request_timeout 120 s, url_timeout 10 s, max_url_bytes 20 MiB (with --allow-urls only).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Limits", "ByteBudget", "TooLarge", "Busy", "SlowBody"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 2**20
    max_inputs: int = 256
    max_queue: int = 1024
    max_inflight_bytes: int = 256 * 2**20
    max_batch_images: int = 32
    max_batch_texts: int = 128
    max_wait: float = 0.005
    image_workers: int = 2
    text_workers: int = 1
    request_timeout: float = 120.0
    body_timeout: float = 60.0
    max_connections: int = 1000
    stall_timeout: float = 60.0
    allow_urls: bool = False
    url_timeout: float = 10.0
    max_url_bytes: int = 20 * 2**20
    max_labels: int = 1000
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_queue", "max_inflight_bytes", "max_batch_images",
                     "max_batch_texts", "image_workers", "text_workers", "max_url_bytes", "max_labels", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_wait", "request_timeout", "stall_timeout", "url_timeout", "body_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_inputs > self.max_queue:
            raise ValueError(f"max_inputs ({self.max_inputs}) above max_queue ({self.max_queue}): "
                             "a full-size request could never be queued")
        if self.max_body_bytes > self.max_inflight_bytes:
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) above max_inflight_bytes "
                             f"({self.max_inflight_bytes}): a full-size body could never be read")


class SlowBody(Exception):
    """408: the body did not arrive within body_timeout."""


class TooLarge(Exception):
    """413: the body or the input count is over its limit."""


class Busy(Exception):
    """503 + Retry-After: the server cannot take this work now (queue or byte budget full, shutting down)."""


class ByteBudget:
    """A counter of request bytes held at once; `take` fails instead of waiting (the caller answers 503)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.held + n > self.limit:
                raise Busy(f"{self.held} bytes of requests held, the limit is {self.limit}")
            self.held += n

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n
