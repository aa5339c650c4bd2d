"""fastembed's names on fastclip's classes, so code written for fastembed runs unchanged.

`ImageEmbedding` / `TextEmbedding` take fastembed's constructor keywords (cuda, device_ids, lazy_load,
specific_model_path; cuda/device_ids become providers in fastclip.providers.resolve_providers) and carry
its class-level names: `list_supported_models`, `get_embedding_size`, `embedding_size`, and for texts
`query_embed` / `passage_embed`. Nothing here computes a vector.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from .layouts import catalog


def _listed(tower: str) -> list[dict[str, Any]]:
    """The catalog models fastembed lists under a name for `tower`, in fastembed's listing format."""
    rows = []
    for entry in catalog.models():
        name = (entry.get("fastembed") or {}).get(tower)
        if not name:
            continue
        size = entry["size_mb"][tower].get("fp32")
        rows.append({
            "model": name, "dim": entry["embed_dim"], "description": f"{entry['description']}: {tower} tower",
            "license": entry["license"], "size_in_GB": None if size is None else round(size / 1000, 2),
            "sources": {"hf": entry["towers"][tower]}, "model_file": catalog.tower_file(entry, tower),
            "additional_files": [], "tasks": {},
        })
    return rows


class FastembedNames:
    """fastembed's class-level names, for a class with `tower_name` and `dim`."""

    tower_name = ""

    @classmethod
    def list_supported_models(cls) -> list[dict[str, Any]]:
        """The models fastembed names, as fastembed lists them (model, dim, description, ...).

        fastclip knows more names: fastclip.list_supported_models() lists its whole catalog (`fastclip
        models`). Any folder written by `fastclip export` and any published layout's folder load too.
        """
        return _listed(cls.tower_name)

    @classmethod
    def get_embedding_size(cls, model_name: str) -> int:
        """fastembed's classmethod: the dim of a catalog model (fastembed's names included), without loading it."""
        entry = catalog.find(str(model_name))
        if entry is None:
            raise ValueError(f"{model_name} is not a catalog model (`fastclip models`); load it and read .dim "
                             "(or .embedding_size)")
        return entry["embed_dim"]

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
