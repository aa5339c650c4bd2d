"""fastclip: CLIP image and text embeddings with onnxruntime, no PyTorch.

    from fastclip import ImageEmbedding, TextEmbedding, CLIP
    vectors = ImageEmbedding("models/clip-b32").embed(["photo.jpg"])   # lazy generator of (dim,) float32
"""

from .batch import EmbeddingBatch, ImageBatch
from .clip import CLIP
from .embedding import ImageEmbedding, TextEmbedding
from .errors import ExportError, FastClipError, ImageError, ModelError, TextError, WorkerError
from .runner import Tuning, l2_normalize, set_parallel_embed
from .worker import WorkerSpec

__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "ImageEmbedding",
    "TextEmbedding",
    "l2_normalize",
    "EmbeddingBatch",
    "ImageBatch",
    "Tuning",
    "WorkerSpec",
    "FastClipError",
    "ImageError",
    "ModelError",
    "TextError",
    "WorkerError",
    "ExportError",
]


def _pooled_embed(model, items, batch_size, processes, **options):
    # The runtime never imports fastclip.bulk (it sits above it); this package wires the two, and imports
    # the process machinery only when parallel= is first used (see fastclip.runner).
    from .bulk.pool import pooled_embed

    return pooled_embed(model, items, batch_size, processes, **options)


set_parallel_embed(_pooled_embed)
