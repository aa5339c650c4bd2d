"""Parity of every exported file against the torch fp32 reference, on real photos and sentences.

Both sides get identical inputs - the reference's own preprocessing and tokenizer produce them once -
so what is measured is the graph alone. Figures go to the manifest; a file under its threshold fails
the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastclip.errors import ExportError

from .source import Source

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina",
               "hubble_deep_field", "camera")  # camera is grayscale: exercises the RGB conversion
SENTENCES = [
    "a photo of an astronaut in a white space suit",
    "A cat sleeping on a sunny windowsill.",
    "two cups of coffee & a croissant on a wooden table",
    "The rocket lifted off at dawn, trailing smoke!",
    "microscope image of stained tissue",
    "a blurry picture of a dog",
    "Une photo d'un chat noir",
    "夕焼けの富士山",
    "",
    "the quick brown fox jumps over the lazy dog " * 12,  # longer than the context: truncated
    "Tom &amp; Jerry",
    "diagram of the human retina, labeled",
]
# The tokenizer check adds scripts, emoji and punctuation-only text: token ids must be equal to the reference's.
TOKENIZER_SENTENCES = SENTENCES + [
    "Ein Hund läuft über die Straße, ÄÖÜ ß",
    "собака бежит по снегу",
    "كلب يركض في الحديقة",
    "一只猫坐在窗台上。",
    "고양이가 창가에 앉아 있다",
    "🐶🐱 dog & cat 🎉",
    "?!...,;:",
    "snake_case_words and UPPER lower MiXeD",
    "  spaces   and\ttabs\nnewlines  ",
    "naïve café résumé",
]


@dataclass(frozen=True)
class Threshold:
    min_cosine: float
    max_abs_rel: float | None  # max |onnx - torch| / max reference feature norm


# fp32: the same computation; only kernel summation order differs (measured ~1e-7 x norm).
# fp16 / int8 are measured on full-size random-init ViT-B/32 (open_clip and transformers, both towers,
# worst of the two): fp16 min cosine 0.9999993, max abs diff 1.7e-4 x norm; int8 (dynamic, per-channel
# QInt8) min cosine 0.99910, 6.8e-3 x norm. Trained weights have larger outlier activations than random
# init - int8 suffers most - so the reduced-precision bounds keep about 10x that margin, and still
# catch a broken conversion (which lands far below).
THRESHOLDS = {
    "fp32": Threshold(0.99999, 1e-4),
    "fp16": Threshold(0.9999, 2e-3),
    "int8": Threshold(0.99, 5e-2),
}


def photos() -> list:
    from PIL import Image
    from skimage import data

    return [Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB") for name in PHOTO_NAMES]


@dataclass
class Reference:
    """Inputs and the torch fp32 outputs for one tower."""

    inputs: list  # input batches: arrays (one graph input) or {name: array} (text: full and shortest-padded)
    outputs: list[np.ndarray]


def vision_reference(source: Source) -> Reference:
    pixels = torch.stack([source.preprocess(im) for im in photos()]).float()
    with torch.no_grad():
        out = (source.reference_vision or source.vision)(pixels).float().numpy()
    return Reference([pixels.numpy()], [out])


def text_reference(source: Source) -> Reference:
    if source.attention_mask_input:
        ids, mask = source.tokenize_with_mask(SENTENCES)
        with torch.no_grad():
            out = (source.reference_text or source.text)(ids.long(), mask.long()).float().numpy()
        _check_finite(out)
        return Reference([{"input_ids": ids.long().numpy(), source.attention_mask_input: mask.long().numpy()}], [out])
    ids = source.tokenize(SENTENCES).long()
    with torch.no_grad():
        out = (source.reference_text or source.text)(ids).float().numpy()
    _check_finite(out)
    if not source.dynamic_length or source.padding_side != "right":
        return Reference([ids.numpy()], [out])
    # The texts that fit, cut just after the longest one's last real token: proves the graph's dynamic
    # length gives what the full context_length padding gives.
    real = ids != source.pad_token_id
    if source.pad_token_id == source.eos_token_id:  # padded with the end token: real tokens end at the first
        real = torch.arange(ids.shape[1]) <= (ids == source.eos_token_id).int().argmax(dim=1, keepdim=True)
    ends = ids.shape[1] - 1 - real.int().flip(1).argmax(dim=1)
    fits = ends < ids.shape[1] - 1
    short = ids[fits][:, : int(ends[fits].max()) + 1]
    return Reference([ids.numpy(), short.numpy()], [out, out[fits.numpy()]])


def _check_finite(out: np.ndarray) -> None:
    if not np.all(np.isfinite(out)):
        raise ExportError("the torch text tower produced non-finite values; cannot verify the export")


def tokenizer(folder: Path, source: Source) -> dict:
    """The runtime's tokenizer (fastclip.text, from the folder just written) against the reference tokenizer:
    equal token ids on TOKENIZER_SENTENCES, or ExportError naming the first text that differs."""
    from fastclip import manifest
    from fastclip.text import TextTokenizer

    spec = manifest.load(folder).text
    ref = source.tokenize(TOKENIZER_SENTENCES).long().numpy()
    got, mask = TextTokenizer(folder / spec.tokenizer, spec).encode_batch_with_mask(TOKENIZER_SENTENCES)
    width = got.shape[1]
    pad = np.full((len(got), ref.shape[1] - width), spec.pad_token_id, dtype=np.int64)
    full = np.concatenate([got, pad] if spec.padding_side == "right" else [pad, got], axis=1)
    for i, (a, b) in enumerate(zip(full, ref)):
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ExportError(
                f"the exported tokenizer does not reproduce the reference on text #{i} {TOKENIZER_SENTENCES[i]!r}: "
                f"fastclip {a.tolist()[:24]}..., reference {b.tolist()[:24]}...; fastclip cannot tokenize this "
                "model exactly"
            )
    return {"texts": len(ref)}


def session(path: Path, disabled_optimizers: tuple[str, ...] = ()):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def measure(path: Path, ref: Reference, disabled_optimizers: tuple[str, ...] = ()) -> dict:
    sess = session(path, disabled_optimizers)
    name = sess.get_inputs()[0].name
    cosines, diffs, norms = [], [], []
    for x, want in zip(ref.inputs, ref.outputs):
        got = sess.run(None, x if isinstance(x, dict) else {name: x})[0].astype(np.float64)
        want = want.astype(np.float64)
        if got.shape != want.shape:
            raise ExportError(f"{path.name}: output shape {got.shape} differs from torch {want.shape}")
        norm_got, norm_want = np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1)
        cosines.append((got * want).sum(1) / np.maximum(norm_got * norm_want, 1e-30))
        diffs.append(np.abs(got - want).max())
        norms.append(norm_want.max())
    max_abs = float(max(diffs))
    min_cos = float(np.concatenate(cosines).min())
    return {
        "min_cosine": min_cos if np.isfinite(min_cos) else -1.0,
        "max_abs_diff": max_abs if np.isfinite(max_abs) else 1e30,
        "max_abs_diff_rel": float(max_abs / max(norms)) if np.isfinite(max_abs) else 1e30,
        "samples": int(sum(len(c) for c in cosines)),
    }


def check(tower: str, precision: str, figures: dict) -> dict:
    """Add the thresholds to `figures`; raise ExportError when they are not met."""
    t = THRESHOLDS[precision]
    figures = {**figures, "threshold_cosine": t.min_cosine, "threshold_abs_rel": t.max_abs_rel}
    too_far = t.max_abs_rel is not None and figures["max_abs_diff_rel"] > t.max_abs_rel
    if figures["min_cosine"] < t.min_cosine or too_far:
        raise ExportError(
            f"{tower} {precision} does not match torch: min cosine {figures['min_cosine']:.7f} "
            f"(need >= {t.min_cosine}), max abs diff {figures['max_abs_diff']:.3g} = "
            f"{figures['max_abs_diff_rel']:.3g} x feature norm (need <= {t.max_abs_rel})"
        )
    return figures
