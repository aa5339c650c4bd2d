"""fastembed's names on fastclip's classes, so code written for fastembed runs unchanged.

`ImageEmbedding` / `TextEmbedding` take fastembed's constructor keywords (cuda, device_ids, lazy_load,
specific_model_path; cuda/device_ids become providers in fastclip.providers.resolve_providers) and carry
its class-level names: `list_supported_models`, `get_embedding_size`, `embedding_size`, and for texts
`query_embed` / `passage_embed`. Nothing here computes a vector.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO

# The hub repos fastclip knows by name, per tower, in fastembed's listing format.
SUPPORTED: dict[str, tuple[dict[str, Any], ...]] = {
    "vision": ({
        "model": DEFAULT_VISION_REPO, "dim": 512,
        "description": "CLIP ViT-B/32 vision tower (OpenAI weights, fastembed's ONNX export); fastclip's default",
        "license": "mit", "size_in_GB": 0.34, "sources": {"hf": DEFAULT_VISION_REPO}, "model_file": "model.onnx",
        "additional_files": [], "tasks": {},
    },),
    "text": ({
        "model": DEFAULT_TEXT_REPO, "dim": 512,
        "description": "CLIP ViT-B/32 text tower (OpenAI weights, fastembed's ONNX export), 77 tokens; "
                       "fastclip's default",
        "license": "mit", "size_in_GB": 0.25, "sources": {"hf": DEFAULT_TEXT_REPO}, "model_file": "model.onnx",
        "additional_files": [], "tasks": {},
    },),
}


class FastembedNames:
    """fastembed's class-level names, for a class with `tower_name` and `dim`."""

    tower_name = ""

    @classmethod
    def list_supported_models(cls) -> list[dict[str, Any]]:
        """The hub repos fastclip knows by name, as fastembed lists them (model, dim, description, ...).

        Any folder written by `fastclip export` (any open_clip or transformers CLIP model) and any
        fastembed-style tower folder load too; they are not listed because they are not names.
        """
        return [dict(entry, sources=dict(entry["sources"])) for entry in SUPPORTED.get(cls.tower_name, ())]

    @classmethod
    def get_embedding_size(cls, model_name: str) -> int:
        """fastembed's classmethod: the dim of a listed model, without loading it."""
        for entry in SUPPORTED.get(cls.tower_name, ()):
            if entry["model"].lower() == str(model_name).lower():
                return entry["dim"]
        raise ValueError(f"{model_name} is not a listed model; load it and read .dim (or .embedding_size)")

    @property
    def embedding_size(self) -> int:
        """fastembed's name for `dim`."""
        return self.dim  # type: ignore[attr-defined]


class FastembedTextNames:
    """fastembed's query/passage entry points. CLIP uses no query or passage prefix: both are `embed`."""

    def query_embed(self, query: str | Iterable[str], **kw: Any) -> Iterator[np.ndarray]:
        """fastembed's name for embedding search queries."""
        return self.embed(query, **kw)  # type: ignore[attr-defined]

    def passage_embed(self, texts: Iterable[str], **kw: Any) -> Iterator[np.ndarray]:
        """fastembed's name for embedding documents."""
        return self.embed(texts, **kw)  # type: ignore[attr-defined]
