"""The memory an export needs, estimated from the parameter counts before any weight is loaded.

An export that runs out of memory half way is killed by the OS (or takes a shared machine down with
it); refusing up front with the figures is the clear error. The factors are peak resident memory
per fp32 byte of weights (4 bytes a parameter), measured on this exporter with random-init ViT-L-14
and ViT-H-14 (benchmarks/export_zoo.py, per-stage peaks in benchmarks/EXPORT_ZOO.md), rounded up; the
constant is fitted so that the estimate is never below a recorded peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fastclip.errors import ExportError

GB = 1e9
# What does not grow with the model: Python + torch + open_clip / transformers + onnxruntime, the
# verification photos, allocator slack. Fitted so that no peak recorded in benchmarks/EXPORT_ZOO.md falls
# above the estimate (tests/test_export.py checks each): 0.6 GB left a ViT-B-32 export at 2.1 GB
# estimated against 2.41 GB measured (issue 19); the large models' peaks sit 0.3-0.5 GB under 0.6 + the
# factors below, so only the constant moves.
BASE_BYTES = 0.95e9
# Building the torch model: random init holds one copy (measured: ViT-L-14 2.2 GB = 0.5 + 1.71); a
# checkpoint holds its state dict beside it while it loads.
LOAD = {"random": 1.0, "checkpoint": 2.0}
# Tracing one tower, beyond the torch weights still loaded: x the tower's fp32 weights. Under 2 GB
# torch builds the whole protobuf in memory and copies it on the way out (measured 3.1-3.2 x: ViT-L-14
# text 0.49 GB -> +1.5 GB, vision 1.22 GB -> +3.9 GB; ViT-H-14 text 1.42 GB -> +4.3 GB). Over 2 GB it
# writes the weights to files as it goes, and the constant-folded copies are what remains (ViT-H-14
# vision 2.53 GB: <= +5.7 GB).
TRACE = {"protobuf": 3.3, "external": 2.3}
# Making and verifying a variant from the saved fp32 file, torch freed: x the tower's fp32 weights
# (the converter / quantizer's in-memory model plus the onnxruntime session that verifies it).
VARIANT = {"fp32": 1.5, "fp16": 1.5, "int8": 2.0}


def _trace(weights: float) -> float:
    from .onnx_io import EXTERNAL_DATA_BYTES

    return weights * TRACE["external" if weights > EXTERNAL_DATA_BYTES else "protobuf"]


@dataclass(frozen=True)
class Estimate:
    vision_params: int
    text_params: int
    peak_bytes: float
    stage: str  # what sets the peak, in words

    @property
    def params(self) -> int:
        return self.vision_params + self.text_params


def estimate(vision_params: int, text_params: int, precisions: Sequence[str], checkpoint: bool = False) -> Estimate:
    wv, wt = 4.0 * vision_params, 4.0 * text_params
    stages = {
        "loading the torch model": (LOAD["checkpoint" if checkpoint else "random"]) * (wv + wt),
        # Text is traced first and freed (api._towers), so the vision trace has only itself loaded.
        "tracing the text tower": wv + wt + _trace(wt),
        "tracing the vision tower": wv + _trace(wv),
    }
    for p in precisions:
        stages[f"making and verifying the {p} vision tower"] = VARIANT[p] * wv
        stages[f"making and verifying the {p} text tower"] = VARIANT[p] * wt
    stage = max(stages, key=stages.get)
    return Estimate(vision_params, text_params, BASE_BYTES + stages[stage], stage)


def available_bytes() -> float | None:
    """Memory the OS can give without swapping (MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().available)


def check(model: str, est: Estimate, precisions: Sequence[str], available: float | None) -> None:
    """Raise ExportError when `est` does not fit in `available` bytes."""
    if available is None or est.peak_bytes <= available:
        return
    message = (f"{model} ({est.params / 1e9:.2f} B parameters: vision {est.vision_params / 1e6:.0f} M, "
               f"text {est.text_params / 1e6:.0f} M) needs about {est.peak_bytes / GB:.1f} GB of memory at its "
               f"peak ({est.stage}), and this machine has {available / GB:.1f} GB available")
    alone = estimate(est.vision_params, est.text_params, ["fp32"])
    if alone.peak_bytes < est.peak_bytes:
        message += (f"; --precision fp32 needs about {alone.peak_bytes / GB:.1f} GB"
                    + (" and fits" if alone.peak_bytes <= available else ""))
    else:
        message += "; fewer precisions would not lower it (the peak is on the PyTorch side)"
    message += ("; free memory or use a larger machine, or pass --ignore-memory-estimate to try anyway "
                "(the OS may kill the export)")
    raise ExportError(message)
