"""What sits between the public classes and onnxruntime: the public tuning knobs and the batch result type.

`Tuning` is the one documented place for scheduling choices (decode threads, text bucketing, concurrent
text runs, onnxruntime spin-waiting), so benchmarks and users set them by name instead of patching
private attributes. `EmbeddingBatch` (fastclip.batch) is what one batch-level call returns: the in-process generators, the
process pool (fastclip.bulk) and the Ray integration all build on `ImageEmbedding.embed_batch` /
`TextEmbedding.embed_batch`, so every path computes vectors the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Tuning", "available_cores"]


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
