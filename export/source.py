"""What the export needs from a reference model, whatever library it came from.

A loader (`hf_source`, `open_clip_source`) fills one `Source`; everything after that - ONNX export,
verification, the model folder - reads only this, so the two libraries never leak further.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class Source:
    kind: str  # "hf" | "open_clip"
    description: dict[str, Any]  # the manifest's "source" entry
    architecture: str
    embed_dim: int
    logit_scale: float  # exponentiated
    logit_bias: float | None

    # Towers ending at the projected, unnormalized embedding.
    vision: torch.nn.Module  # pixel_values (B,3,S,S) float32 -> (B,embed_dim)
    text: torch.nn.Module | None  # input_ids (B,L) int64 -> (B,embed_dim); None: image tower only (NO_TEXT)

    # Image preprocessing (the resize mode, filter and fill are below, with their defaults).
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess: Callable[[Any], torch.Tensor]  # reference: PIL image -> (3,S,S)

    # Text.
    context_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    pooling: str  # "eos" | "argmax" | "last" | "first" | "mean" | "cls" (informative: the graph pools)
    cleaning: str  # a name of fastclip.families.text.CLEANERS
    tokenize: Callable[[list[str]], torch.Tensor]  # reference: texts -> (N, context_length) int64
    write_tokenizer: Callable[[Path], None]  # writes tokenizer.json & co into text/

    # The library's own encoders (text: full context_length input), when `vision` / `text` are
    # re-implementations of them: verification measures the graphs against these, not our wrappers.
    reference_vision: Callable[[torch.Tensor], torch.Tensor] | None = None
    reference_text: Callable[[torch.Tensor], torch.Tensor] | None = None

    # Image preprocessing by name (fastclip.manifest.RESIZE_MODES / INTERPOLATIONS) and the "longest" fill.
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill: int = 0
    # How probabilities come from logits (fastclip.manifest.SCORINGS): "sigmoid" for sigmoid-trained models.
    scoring: str = "softmax"
    # Text rules per family (the manifest's text spec, format 2).
    dynamic_length: bool = True  # the graph gives the same vector for batch-longest padding
    padding_side: str = "right"
    strip_sep_token_id: int | None = None
    language: str | None = None  # default source language (NLLB) and the codes the tokenizer knows
    languages: tuple[str, ...] = ()
    # Name of the graph's attention-mask input when the reference feeds the tokenizer's mask (transformers
    # SigLIP 2); `tokenize_with_mask` then gives (ids, mask) as the reference tokenizer returns them.
    attention_mask_input: str | None = None
    tokenize_with_mask: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def towers(self) -> tuple[str, ...]:
        return ("vision", "text") if self.text is not None else ("vision",)

    def release(self, tower: str) -> None:
        """Free the torch weights of `tower` ("vision" | "text") once it is traced and its reference
        outputs are computed; the rest of the export reads ONNX files. Storage is emptied in place
        because the library's own model object still refers to the same tensors."""
        module = self.vision if tower == "vision" else self.text
        with torch.no_grad():
            for t in (*module.parameters(), *module.buffers()):
                t.data = torch.empty(0, dtype=t.dtype)


# The text fields of a Source that exports its image tower alone.
NO_TEXT: dict[str, Any] = dict(text=None, context_length=0, bos_token_id=0, eos_token_id=0, pad_token_id=0, pooling="",
                               cleaning="none", tokenize=None, write_tokenizer=None)
