"""Zero-shot probabilities per family, keyed by the manifest's "scoring".

Each scorer takes cosines (n_images, n_labels) and the model's exponentiated logit_scale and its
logit_bias (None when the model has none) and returns float32 probabilities of the same shape:

* "softmax" (CLIP-trained, contrastive softmax loss): softmax over the labels of logit_scale * cos.
  A bias would cancel out, so none is added.
* "sigmoid" (SigLIP, SigLIP 2, NLLB-SigLIP: pairwise sigmoid loss): sigmoid(logit_scale * cos +
  logit_bias) for each label on its own; rows do not sum to 1, and an image can match no label.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["SCORERS", "softmax", "sigmoid"]


def softmax(cos: np.ndarray, logit_scale: float, logit_bias: float | None) -> np.ndarray:
    logits = logit_scale * np.asarray(cos, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def sigmoid(cos: np.ndarray, logit_scale: float, logit_bias: float | None) -> np.ndarray:
    if logit_bias is None:
        raise ValueError("sigmoid scoring needs the model's logit_bias")
    logits = logit_scale * np.asarray(cos, np.float64) + logit_bias
    # exp of a negative number only: no overflow for logits of either sign.
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


SCORERS: dict[str, Callable[[np.ndarray, float, float | None], np.ndarray]] = {
    "softmax": softmax,
    "sigmoid": sigmoid,
}
