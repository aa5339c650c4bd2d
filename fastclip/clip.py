"""`CLIP`: both towers of one model, with cosine similarity and zero-shot classification."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .defaults import IMAGE_BATCH, TEXT_BATCH
from .embedding import ImageEmbedding, TextEmbedding
from .errors import ModelError
from .families.score import SCORERS
from .model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO
from .runner import l2_normalize

__all__ = ["CLIP"]


class CLIP:
    """Both towers of one model, with similarity and zero-shot classification.

    model_name: one fastclip folder or repo holding both towers. With no model named, fastembed's
    published CLIP ViT-B/32 vision and text repos are used together. close() (or a `with` block)
    ends both towers' threads.
    """

    def __init__(
        self,
        model_name: str | Path | None = None,
        *,
        exif_transpose: bool = True,
        fast: bool | str = False,
        workers: int | None = None,
        concurrent_runs: int | None = None,
        language: str | None = None,
        **common: Any,
    ):
        self.images = ImageEmbedding(
            model_name or DEFAULT_VISION_REPO, exif_transpose=exif_transpose, fast=fast, workers=workers, **common
        )
        self.texts = TextEmbedding(model_name or DEFAULT_TEXT_REPO, concurrent_runs=concurrent_runs, language=language,
                                   **common)
        if self.images.dim != self.texts.dim:
            raise ModelError(
                f"vision tower gives {self.images.dim}-d vectors, text tower {self.texts.dim}-d: not one CLIP model"
            )
        self.logit_scale = self.images.manifest.logit_scale
        self.logit_bias = self.images.manifest.logit_bias
        self.scoring = self.images.manifest.scoring

    @property
    def dim(self) -> int:
        return self.images.dim

    def close(self) -> None:
        self.images.close()
        self.texts.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_images(self, images: Iterable[Any], batch_size: int = IMAGE_BATCH, parallel: int | None = None,
                     **kw: Any) -> Iterator[np.ndarray | None]:
        return self.images.embed(images, batch_size, parallel, **kw)

    def embed_texts(self, texts: Iterable[str] | str, batch_size: int = TEXT_BATCH, parallel: int | None = None,
                    **kw: Any) -> Iterator[np.ndarray]:
        return self.texts.embed(texts, batch_size, parallel, **kw)

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity between every row of `a` and every row of `b` (vectors or stacks of them)."""
        a2 = l2_normalize(np.atleast_2d(np.asarray(list(a) if not hasattr(a, "shape") else a, dtype=np.float32)))
        b2 = l2_normalize(np.atleast_2d(np.asarray(list(b) if not hasattr(b, "shape") else b, dtype=np.float32)))
        return a2 @ b2.T

    def classify(
        self, images: Iterable[Any], labels: Sequence[str], *, template: str = "a photo of a {}.",
        batch_size: int = IMAGE_BATCH,
    ) -> np.ndarray:
        """Zero-shot probabilities, shape (n_images, n_labels), as the model was trained to score: a softmax
        over the labels (CLIP) or an independent sigmoid per label (SigLIP); see fastclip.families.score."""
        if isinstance(labels, str) or not labels:
            raise ValueError("labels must be a non-empty list of strings")
        self._check_scale()  # before any embedding work
        prompts = [template.format(label) for label in labels]
        text = np.stack(list(self.texts.embed(prompts)))
        image = np.stack(list(self.images.embed(images, batch_size)))
        return self.probabilities(image, text)

    def probabilities(self, image_vectors: Any, text_vectors: Any) -> np.ndarray:
        """The model's own zero-shot probabilities (n_images, n_labels) for vectors already computed (by
        `embed`, a pool, a server): `classify` without the embedding, scored the family's way."""
        self._check_scale()
        return SCORERS[self.scoring](self.similarity(image_vectors, text_vectors), self.logit_scale, self.logit_bias)

    def _check_scale(self) -> None:
        # Probabilities depend on the trained scale (and bias): 100 where a model learned 30 flattens every
        # distribution, so a folder that does not ship it gets no made-up one.
        if self.logit_scale is None:
            layout = self.images.manifest.source.get("layout", "this")
            raise ModelError(
                f"{self.images.model_name}: the {layout} layout does not ship the model's trained logit scale"
                f"{' and bias' if self.scoring == 'sigmoid' else ''}, so zero-shot probabilities cannot be computed "
                "as the model was trained to give them. Embeddings and CLIP.similarity work; for classify, export "
                "the model with `fastclip export` (its manifest records the scale)")
