"""fastclip: CLIP image and text embeddings with onnxruntime, no PyTorch.

    from fastclip import ImageEmbedding, TextEmbedding, CLIP
    vectors = ImageEmbedding("models/clip-b32").embed(["photo.jpg"])   # lazy generator of (dim,) float32

The names below are imported on first use (PEP 562), so `import fastclip.cli` for `fastclip --help`, or
`fastclip.errors` alone, loads neither onnxruntime, Pillow nor tokenizers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "CLIP": "clip",
    "ImageEmbedding": "embedding",
    "TextEmbedding": "embedding",
    "EmbeddingPool": "pool",
    "EmbeddingBatch": "batch",
    "Tuning": "runner",
    "l2_normalize": "runner",
    "WorkerSpec": "worker",
    "FastClipError": "errors",
    "ImageError": "errors",
    "ModelError": "errors",
    "TextError": "errors",
    "WorkerError": "errors",
    "ExportError": "errors",
    "list_supported_models": "layouts.catalog",
}
__all__ = list(_HOMES)

if TYPE_CHECKING:
    from .batch import EmbeddingBatch
    from .clip import CLIP
    from .embedding import ImageEmbedding, TextEmbedding
    from .errors import ExportError, FastClipError, ImageError, ModelError, TextError, WorkerError
    from .layouts.catalog import list_supported_models
    from .pool import EmbeddingPool
    from .runner import Tuning, l2_normalize
    from .worker import WorkerSpec


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fastclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
