"""fastclip: CLIP image and text embeddings with onnxruntime, no PyTorch.

    from fastclip import ImageEmbedding, TextEmbedding, CLIP
    vectors = ImageEmbedding("models/clip-b32").embed(["photo.jpg"])   # lazy generator of (dim,) float32
"""

from .batch import EmbeddingBatch, ImageBatch
from .embedding import CLIP, ImageEmbedding, TextEmbedding, l2_normalize
from .errors import ExportError, FastClipError, ImageError, ModelError, TextError
from .runner import Tuning

__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "ImageEmbedding",
    "TextEmbedding",
    "l2_normalize",
    "EmbeddingBatch",
    "ImageBatch",
    "Tuning",
    "FastClipError",
    "ImageError",
    "ModelError",
    "TextError",
    "ExportError",
]
