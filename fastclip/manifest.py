"""The model-folder manifest (`fastclip.json`): the one contract shared by export and runtime.

The export stage writes it; the runtime trusts it, checks it, and refuses it clearly when it is
missing, malformed or from a newer format version. Plain dicts in and out (JSON on disk) with
small dataclasses on top, so both sides stay free of each other's imports.

Folder layout written by the export stage::

    OUT_DIR/
      fastclip.json                 this manifest
      vision/model.onnx             fp32 tower (+ model_fp16.onnx, model_int8.onnx, external data)
      vision/preprocessor_config.json   CLIPImageProcessor format (fastembed / transformers read it)
      text/model.onnx               fp32 tower (+ variants)
      text/tokenizer.json, tokenizer_config.json, special_tokens_map.json, config.json
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from .defaults import PRECISIONS
from .errors import ModelError
from .hints import upgrade_hint
from .families.resize import CROP_OFFSETS, RESAMPLING, RESIZERS, RGB_CONVERSIONS
from .families.score import SCORERS
from .families.text import CLEANERS, ID_DTYPES, PADDING_SIDES

MANIFEST_NAME = "fastclip.json"
# 2: vision.resize_mode "squash" / "longest", vision.interpolation "bilinear", vision.fill, "scoring";
# the text spec gained cleanings other than "open_clip"/"none", padding_side, strip_sep_token_id and
# languages. A version-1 reader would ignore those fields and shift vectors, token ids or probabilities
# silently; the version check makes it refuse them instead.
# 3: what published layouts need (fastclip.layouts): vision.crop_offset and convert_rgb (transformers'
# processors), a tower's fixed graph batch and self-normalized output, text.ids_dtype, logit_scale null (not
# shipped). `dump` writes 2 unless one is set, so exports stay readable by version-2 readers.
FORMAT_VERSION = 3
_V3_FIELDS = {"vision": ("crop_offset", "convert_rgb", "batch", "output_normalized"),
              "text": ("ids_dtype", "batch", "output_normalized")}


def _v3_fields(data: dict[str, Any]) -> list[str]:
    found = [f"{t}.{n}" for t, names in _V3_FIELDS.items() if isinstance(data.get(t), dict) for n in names
             if n in data[t]]
    return found + (["logit_scale null"] if "logit_scale" in data and data["logit_scale"] is None else [])

# Text cleaning applied before the tokenizer.json pipeline: the names of fastclip.families.text.CLEANERS
# ("open_clip", "lower", "whitespace", "canonicalize": open_clip's clean functions; "none").
CLEANINGS = tuple(CLEANERS)

# Image preprocessing, open_clip's names (PreprocessCfg.resize_mode / interpolation): the keys of the
# runtime's tables (fastclip.families.resize), so a name the manifest accepts always has its resizer.
RESIZE_MODES = tuple(RESIZERS)
INTERPOLATIONS = tuple(RESAMPLING)
CROP_OFFSET_NAMES = tuple(CROP_OFFSETS)
RGB_CONVERSION_NAMES = tuple(RGB_CONVERSIONS)

# How CLIP.classify turns logits into probabilities (fastclip.families.score):
#   "softmax": over the labels of logit_scale * cos (CLIP-trained: contrastive softmax loss);
#   "sigmoid": sigmoid(logit_scale * cos + logit_bias) per label (SigLIP's pairwise sigmoid loss).
SCORINGS = tuple(SCORERS)

# Bounds on what a manifest may ask for. Image sizes of published CLIP-family models run 224-448 (a few
# at 512-1024); 4096 px is 200 MB per preprocessed image, past any sensible use. Context lengths run 64-
# 256 (CLIP 77, SigLIP 64, long-context variants 248); 4096 tokens keeps an absurd value from sizing
# every batch's allocation.
MAX_IMAGE_SIZE = 4096
MAX_CONTEXT_LENGTH = 4096
# Token ids become int64 arrays (the fuzzer found 2**63 reaching numpy as an OverflowError); 2**31 is
# far past any vocabulary. The tokenizer then checks them against its own vocabulary.
MAX_TOKEN_ID = 2**31 - 1


def safe_relative_path(value: Any, what: str, origin: str) -> str:
    """`value` as a path inside the model folder, checked lexically, or ModelError.

    Lexical on purpose: a hub snapshot folder is made of symlinks into ../../blobs, so resolving links
    would refuse every hub model. What a manifest (possibly from a repo someone else controls) may not
    do is name a file outside its folder: absolute paths, drive or UNC anchors, ".." parts, on either
    separator, since the same manifest is read on POSIX and Windows.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ModelError(f"{origin}: {what} must be a non-empty relative path string, got {value!r}")
    for pure in (PurePosixPath(value), PureWindowsPath(value)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            raise ModelError(
                f"{origin}: {what} {value!r} points outside the model folder (absolute, anchored or with "
                "'..'); a model folder may only name files inside itself"
            )
    if value.strip("/\\. ") == "":
        raise ModelError(f"{origin}: {what} {value!r} names the folder itself, not a file")
    return value


def _int(value: Any, what: str, origin: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ModelError(f"{origin}: {what} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ModelError(f"{origin}: {what} must be {bound}, got {value}")
    return value


def _triple(value: Any, what: str, origin: str, positive: bool) -> tuple[float, float, float]:
    """mean/std: exactly one finite float per RGB channel (a 1-value list would broadcast silently)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ModelError(f"{origin}: {what} must list exactly 3 values (R, G, B), got {value!r}")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ModelError(f"{origin}: {what} values must be finite numbers, got {value!r}")
        if positive and x <= 0:
            raise ModelError(f"{origin}: {what} values must be > 0 (they divide the pixels), got {value!r}")
        out.append(float(x))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class TowerFile:
    """One ONNX variant of a tower. `path` is relative to the model folder."""

    path: str
    sha256: str | None = None
    bytes: int | None = None
    external_data: tuple[str, ...] = ()  # relative paths of ONNX external-data files, if any
    external_data_sha256: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    # onnxruntime graph transformers to disable when loading this file on CPU (optional, export adds
    # it for fp16: ORT 1.31's NchwcTransformer crashes on fp16 CLIP graphs); pass as
    # InferenceSession(..., disabled_optimizers=...).
    disabled_optimizers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verification:
    """Parity of one variant against the torch fp32 reference, measured at export time."""

    min_cosine: float
    max_abs_diff: float
    max_abs_diff_rel: float  # max abs diff / max reference feature norm
    threshold_cosine: float
    threshold_abs_rel: float | None
    samples: int


@dataclass(frozen=True)
class TowerSpec:
    input_name: str
    output_name: str
    files: dict[str, TowerFile]  # precision -> file
    verification: dict[str, Verification] = field(default_factory=dict)
    batch: int | None = None  # the graph's fixed batch (Immich's 1), fed that many rows per run; None: any
    output_normalized: bool = False  # the graph L2-normalizes its output (Immich): normalize=False gives unit vectors


@dataclass(frozen=True)
class ImageSpec(TowerSpec):
    image_size: int = 224
    resize_mode: str = "shortest"  # resize the shortest side to image_size, then center crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    fill: int = 0  # "longest": the padding value, in every band of the image's own mode (0-255)
    crop_offset: str = "round"  # one of CROP_OFFSET_NAMES: torchvision's rounding, or transformers' floor
    convert_rgb: str = "after_resize"  # one of RGB_CONVERSION_NAMES: open_clip's order, or transformers'


@dataclass(frozen=True)
class TextSpec(TowerSpec):
    tokenizer: str = "text/tokenizer.json"
    cleaning: str = "none"
    context_length: int = 77
    dynamic_length: bool = True  # graph accepts any sequence length <= context_length
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 0
    pooling: str = "eos"  # "eos": first end-of-text token; "argmax": highest token id (open_clip); "last",
    # "first", "mean": informative, the graph pools
    attention_mask_input: str | None = None  # name of the mask input when the graph takes one
    padding_side: str = "right"  # the reference tokenizer's padding_side
    # open_clip's strip_sep_token (CLIPA's BERT tokenizer): this id becomes 0 after tokenizing.
    strip_sep_token_id: int | None = None
    # Source-language towers (NLLB): the language codes the tokenizer knows and the one used when none is
    # given. The tokenizer.json post-processor names `language`; another code from `languages` takes its place.
    language: str | None = None
    languages: tuple[str, ...] = ()
    ids_dtype: str = "int64"  # one of ID_DTYPES: the graph's token-id input type


@dataclass(frozen=True)
class Manifest:
    format_version: int
    source: dict[str, Any]
    architecture: str
    embed_dim: int
    # Already exponentiated: logits = logit_scale * cos + logit_bias. None: the folder does not ship the trained
    # value; CLIP.classify then refuses rather than guess one.
    logit_scale: float | None
    logit_bias: float | None
    opset: int | None
    vision: ImageSpec | None
    text: TextSpec | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    scoring: str = "softmax"  # one of SCORINGS


def _tower_kwargs(d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ModelError(f"{where}: tower entry must be an object, got {type(d).__name__}")
    if not isinstance(d.get("files"), dict):
        raise ModelError(f"{where}: \"files\" must be an object of precision -> file")
    files = {}
    for precision, f in d["files"].items():
        if precision not in PRECISIONS:
            raise ModelError(f"{where}: unknown precision {precision!r} (expected one of {PRECISIONS})")
        if not isinstance(f, dict):
            raise ModelError(f"{where}: files.{precision} must be an object, got {type(f).__name__}")
        external = f.get("external_data", ())
        hashes = f.get("external_data_sha256", {})
        if not isinstance(external, (list, tuple)) or not isinstance(hashes, dict):
            raise ModelError(f"{where}: files.{precision}: external_data must be a list, external_data_sha256 an object")
        size = f.get("bytes")
        files[precision] = TowerFile(
            path=safe_relative_path(f.get("path"), f"files.{precision}.path", where),
            sha256=f.get("sha256"),
            bytes=None if size is None else _int(size, f"files.{precision}.bytes", where, 0, 2**62),
            external_data=tuple(safe_relative_path(e, f"files.{precision}.external_data", where) for e in external),
            external_data_sha256={
                safe_relative_path(k, f"files.{precision}.external_data_sha256", where): v for k, v in hashes.items()
            },
            disabled_optimizers=tuple(f.get("disabled_optimizers", ())),
        )
    if not files:
        raise ModelError(f"{where}: no model files listed")
    verification = {p: Verification(**v) for p, v in d.get("verification", {}).items()}
    for name in ("input_name", "output_name"):
        if not isinstance(d.get(name), str) or not d[name]:
            raise ModelError(f"{where}: {name} must be a non-empty string, got {d.get(name)!r}")
    batch = d.get("batch")
    return dict(input_name=d["input_name"], output_name=d["output_name"], files=files, verification=verification,
                batch=None if batch is None else _int(batch, "batch", where, 1, 1 << 16),
                output_normalized=bool(d.get("output_normalized", False)))


def parse(data: dict[str, Any], origin: str = "manifest") -> Manifest:
    """Validate a manifest dict and return a Manifest; raise ModelError naming what is wrong."""
    if not isinstance(data, dict):
        raise ModelError(f"{origin}: a manifest is a JSON object, got a JSON {type(data).__name__}")
    if data.get("format") != "fastclip":
        raise ModelError(f"{origin}: not a fastclip manifest (missing \"format\": \"fastclip\")")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ModelError(f"{origin}: format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{origin}: manifest format version {version} is newer than this fastclip understands "
            f"({FORMAT_VERSION}); upgrade fastclip: {upgrade_hint()}"
        )
    if version < 3 and _v3_fields(data):
        raise ModelError(f"{origin}: {_v3_fields(data)[0]} is a format-3 field in a version-{version} manifest")
    try:
        vision = text = None
        if data.get("vision"):
            v = data["vision"]
            vision = ImageSpec(
                **_tower_kwargs(v, f"{origin} vision"),
                image_size=_int(v["image_size"], "vision.image_size", origin, 1, MAX_IMAGE_SIZE),
                resize_mode=_choice(v.get("resize_mode", "shortest"), RESIZE_MODES, "vision.resize_mode", origin),
                interpolation=_choice(v.get("interpolation", "bicubic"), INTERPOLATIONS, "vision.interpolation", origin),
                mean=_triple(v["mean"], "vision.mean", origin, positive=False),
                std=_triple(v["std"], "vision.std", origin, positive=True),
                fill=_int(v.get("fill", 0), "vision.fill", origin, 0, 255),
                crop_offset=_choice(v.get("crop_offset", "round"), CROP_OFFSET_NAMES, "vision.crop_offset", origin),
                convert_rgb=_choice(v.get("convert_rgb", "after_resize"), RGB_CONVERSION_NAMES, "vision.convert_rgb",
                                    origin),
            )
        if data.get("text"):
            t = data["text"]
            cleaning = t.get("cleaning", "none")
            if cleaning not in CLEANINGS:
                raise ModelError(f"{origin}: unknown text cleaning {cleaning!r} (expected one of {CLEANINGS})")
            text = TextSpec(
                **_tower_kwargs(t, f"{origin} text"),
                tokenizer=safe_relative_path(t["tokenizer"], "text.tokenizer", origin),
                cleaning=cleaning,
                # >= 3: the start token, one content token, the end token.
                context_length=_int(t["context_length"], "text.context_length", origin, 3, MAX_CONTEXT_LENGTH),
                dynamic_length=bool(t.get("dynamic_length", False)),
                bos_token_id=_int(t["bos_token_id"], "text.bos_token_id", origin, 0, MAX_TOKEN_ID),
                eos_token_id=_int(t["eos_token_id"], "text.eos_token_id", origin, 0, MAX_TOKEN_ID),
                pad_token_id=_int(t["pad_token_id"], "text.pad_token_id", origin, 0, MAX_TOKEN_ID),
                pooling=t.get("pooling", "eos"),
                attention_mask_input=t.get("attention_mask_input"),
                ids_dtype=_choice(t.get("ids_dtype", "int64"), ID_DTYPES, "text.ids_dtype", origin),
                **_text_family(t, origin),
            )
        if vision is None and text is None:
            raise ModelError(f"{origin}: neither a vision nor a text tower is described")
        scoring = _choice(data.get("scoring", "softmax"), SCORINGS, "scoring", origin)
        logit_bias = None if data.get("logit_bias") is None else _finite(data["logit_bias"], "logit_bias", origin)
        # Format <= 2 defaults a missing logit_scale to CLIP's clamped 100 (every export writes one); from format 3
        # on, missing or null says the folder ships none.
        raw_scale = data.get("logit_scale", 100.0 if version < 3 else None)
        logit_scale = None if raw_scale is None and version >= 3 else _finite(raw_scale, "logit_scale", origin)
        if scoring == "sigmoid" and logit_bias is None and logit_scale is not None:
            raise ModelError(f"{origin}: scoring 'sigmoid' needs a logit_bias (sigmoid(logit_scale * cos + logit_bias))")
        return Manifest(
            format_version=version,
            source=dict(data.get("source", {})),
            architecture=str(data.get("architecture", "unknown")),
            embed_dim=_int(data["embed_dim"], "embed_dim", origin, 1, 1 << 20),
            logit_scale=logit_scale,
            logit_bias=logit_bias,
            opset=data.get("opset"),
            vision=vision,
            text=text,
            raw=data,
            scoring=scoring,
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelError(f"{origin}: malformed manifest ({type(exc).__name__}: {exc})") from None


def _choice(value: Any, choices: tuple[str, ...], what: str, origin: str) -> str:
    if value not in choices:
        raise ModelError(f"{origin}: {what} {value!r} is not one this fastclip knows ({', '.join(choices)}); "
                         "a newer export may need a newer fastclip")
    return value


def _text_family(t: dict[str, Any], origin: str) -> dict[str, Any]:
    """The format-2 text fields: padding side, sep stripping, languages."""
    side = t.get("padding_side", "right")
    if side not in PADDING_SIDES:
        raise ModelError(f"{origin}: text.padding_side must be one of {PADDING_SIDES}, got {side!r}")
    strip = t.get("strip_sep_token_id")
    languages = t.get("languages", [])
    if not isinstance(languages, (list, tuple)) or not all(isinstance(x, str) and x for x in languages):
        raise ModelError(f"{origin}: text.languages must be a list of language codes, got {languages!r}")
    language = t.get("language")
    if (language is None) != (not languages) or (language is not None and language not in languages):
        raise ModelError(f"{origin}: text.language {language!r} must be one of text.languages (both or neither given)")
    return dict(
        padding_side=side,
        strip_sep_token_id=None if strip is None else _int(strip, "text.strip_sep_token_id", origin, 0, MAX_TOKEN_ID),
        language=language,
        languages=tuple(languages),
    )


def _finite(value: Any, what: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{origin}: {what} must be a finite number, got {value!r}")
    return float(value)


def load(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no manifest; is this a folder written by `fastclip export`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    return parse(data, origin=str(path))


def dump(data: dict[str, Any], folder: str | Path) -> Path:
    """Write a manifest dict after validating it (the export side calls this)."""
    data = {"format": "fastclip", "format_version": FORMAT_VERSION if _v3_fields(data) else 2, **data}
    parse(data, origin="manifest being written")
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
