"""What sits between the public classes and onnxruntime: the public tuning knobs and the batch result type.

`Tuning` is the one documented place for scheduling choices (decode threads, text bucketing, concurrent
text runs, onnxruntime spin-waiting), so benchmarks and users set them by name instead of patching
private attributes. `ImageBatch` is what one batch-level call returns: the in-process generators, the
process pool (fastclip.bulk) and the Ray integration all build on `ImageEmbedding.embed_batch` /
`TextEmbedding.embed_batch`, so every path computes vectors the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ImageError

__all__ = ["Tuning", "ImageBatch", "available_cores"]


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, e.g. in a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Tuning:
    """Scheduling knobs. None of them changes a vector beyond float rounding (max abs diff <= 1e-6).

    decode_workers: image decode + preprocess threads running ahead of the model (None: min(4, cores);
        0: decode inline on the calling thread).
    read_ahead: batches of images decoded ahead of the one the model runs (with decode workers).
    text_bucket_window: texts are tokenized this many batches at a time and sorted by length, so each
        run is padded to about its own texts' length (0 or 1: input-order batches, no sorting).
    text_run_rows: texts per onnxruntime run inside a sorted window on CPU (a GPU runs whole batches).
    concurrent_runs: on CPU, large text jobs (8+ runs) go to a second one-thread session, this many runs
        at a time (None: `threads` if given, else one per core; 1: off).
    allow_spinning: onnxruntime's idle intra-op threads spin-wait between operators (None: automatic,
        off when image decode workers share the cores with an fp32/fp16 model, on otherwise).
    """

    decode_workers: int | None = None
    read_ahead: int = 2
    text_bucket_window: int = 8
    text_run_rows: int = 32
    concurrent_runs: int | None = None
    allow_spinning: bool | None = None

    def __post_init__(self) -> None:
        for name in ("decode_workers", "concurrent_runs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"Tuning.{name} must be a non-negative integer or None, got {value!r}")
        for name in ("read_ahead", "text_run_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Tuning.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.text_bucket_window, int) or self.text_bucket_window < 0:
            raise ValueError(f"Tuning.text_bucket_window must be a non-negative integer, got {self.text_bucket_window!r}")
        if self.allow_spinning not in (None, True, False):
            raise ValueError(f"Tuning.allow_spinning must be True, False or None, got {self.allow_spinning!r}")


@dataclass(frozen=True)
class ImageBatch:
    """The result of `ImageEmbedding.embed_batch` for inputs start_index .. start_index + count - 1.

    vectors: float32 (n_ok, dim), one row per image that could be read, in input order.
    failures: {input index: ImageError} for the others.
    `ok` (bool mask over the inputs) and `indices` (input index of each row of `vectors`) map rows back
    to inputs; `rows()` yields one vector or None per input, as `embed(errors="skip")` does.
    """

    start_index: int
    count: int
    vectors: np.ndarray
    failures: dict[int, ImageError] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(self.count, dtype=bool)
        mask[[i - self.start_index for i in self.failures]] = False
        return mask

    @property
    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.ok) + self.start_index

    def rows(self) -> Iterator[np.ndarray | None]:
        vectors = iter(self.vectors)
        for i in range(self.start_index, self.start_index + self.count):
            yield None if i in self.failures else next(vectors)
