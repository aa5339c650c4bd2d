"""`WorkerSpec`: what another process needs to build the same model, declared by the model itself.

A process pool (fastclip.bulk), a Ray actor or a server worker asks the model for its spec
(`model.worker_spec()`), sends it to the process (it pickles: the class by reference, plain options),
and calls `spec.open(threads=..., device_id=...)` there. The pool thus knows no model class and reads
no private state; the folder in the spec is already resolved, so a worker never resolves a hub name or
downloads again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerSpec"]


@dataclass(frozen=True)
class WorkerSpec:
    """model_class(folder, **options) builds the model: its resolved folder and constructor keywords
    (precision, verify, tuning, providers/cuda/device_ids as asked for, threads, preprocessing).

    kind ("image" or "text") and batch_size (the model's default inputs per batch) are for the pool's
    messages and defaults.
    """

    model_class: type
    folder: str
    model_name: str
    kind: str
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def open(self, threads: int | None = None, device_id: int | None = None) -> Any:
        """The model, built in this process (never lazily: a worker is started to run it).

        threads: onnxruntime threads for this copy, as a pool gives each worker its share of the cores;
        the class fits its own threads to that share (decode threads, concurrent text runs).
        device_id: the GPU this copy runs on (the CUDA provider's device; a CPU-only model stays on CPU).
        """
        options = dict(self.options, lazy_load=False)
        if threads is not None:
            options["threads"] = threads
            options["tuning"] = self.model_class._worker_tuning(options["tuning"], threads)
        if device_id is not None:
            options["device_ids"] = [device_id]
        return self.model_class(self.folder, **options)
