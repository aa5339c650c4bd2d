"""transformers.js's layout (Xenova/*, onnx-community/*): configs at the root, graphs under `onnx/`.

transformers.js's converter (scripts/convert.py with --split_modalities) exports each tower with optimum's
ONNX configs: `onnx/vision_model.onnx` takes `pixel_values`, `onnx/text_model.onnx` takes `input_ids` only (no
attention mask). CLIP's towers (CLIPVisionModelWithProjection / CLIPTextModelWithProjection) output
`image_embeds` / `text_embeds`; SigLIP's (SiglipVisionModel / SiglipTextModel) output `pooler_output`; both also
output `last_hidden_state`. Its quantizer writes variants beside each graph: `_fp16` (io types kept float32),
`_quantized` (8-bit dynamic quantization, the one transformers.js loads by default), `_int8`, `_uint8`, `_q4`,
`_q4f16`, `_bnb4`. Some repos also hold the joint `onnx/model.onnx`, whose initializers `logit_scale` (and
SigLIP's `logit_bias`) are the trained values.

The reference is what the folder's own files configure in transformers: the image processor of
`preprocessor_config.json` (PIL backend: RGB first with transparency on white, shortest-edge resize + center
crop whose offset is floored for CLIP, a plain resize of both sides for SigLIP) and the fast tokenizer of
`tokenizer.json` with `tokenizer_config.json`'s special tokens and padding side, no cleaning. SigLIP's text
tower pools the last position, padding included, so its texts are padded to the full context as its model
card does (`padding="max_length"`); CLIP's causal tower pools the end token, so a batch pads to its longest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..families.resize import from_processor_config
from ..manifest import FORMAT_VERSION, Manifest
from .graph import manifest_from, read_json
from .hf_files import tokenizer_facts
from .onnx_proto import Port, Signature, read_signature
from .origin import known_logit_scale, repo_of

GRAPHS = "onnx"
# File suffix -> precision, in order of preference: "_quantized" before "_int8" for int8, as transformers.js's
# default 8-bit file. Other variants (_uint8, _q4, _q4f16, _bnb4) are listed in the manifest's source, not run.
VARIANTS = (("", "fp32"), ("_fp16", "fp16"), ("_quantized", "int8"), ("_int8", "int8"))
STEMS = {"vision": "vision_model", "text": "text_model"}
# fastclip_export.variants found onnxruntime 1.31's CPU NchwcTransformer segfaulting while loading fp16 CLIP
# graphs and disables it for its own fp16 files; the same guard for these (the tiny test graphs load either way).
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
JOINT = "model"


@dataclass(frozen=True)
class Family:
    """One config.json model_type: the towers' embedding outputs, how it scores, how its text pools."""

    image_output: str
    text_output: str
    scoring: str
    pad_to_context: bool  # the text tower pools a fixed position: every text is padded to the full context
    pooling: str  # informative: the graph pools
    mean: tuple[float, float, float]  # the image processor's defaults, where preprocessor_config.json omits them
    std: tuple[float, float, float]


_OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
FAMILIES = {
    "clip": Family("image_embeds", "text_embeds", "softmax", False, "eos", *_OPENAI),
    "siglip": Family("pooler_output", "pooler_output", "sigmoid", True, "last", (0.5,) * 3, (0.5,) * 3),
}


def matches(folder: Path) -> bool:
    return (folder / GRAPHS).is_dir() and any((folder / GRAPHS).glob("*.onnx"))


def read(folder: Path) -> Manifest:
    return manifest_from(folder, _derive, "transformers.js")


def _variants(folder: Path, stem: str) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for suffix, precision in VARIANTS:
        rel = f"{GRAPHS}/{stem}{suffix}.onnx"
        path = folder / rel
        if precision not in files and path.is_file():
            external = [f"{rel}_data"] if (folder / f"{rel}_data").is_file() else []
            files[precision] = {"path": rel, "bytes": path.stat().st_size, "external_data": external,
                                "disabled_optimizers": list(FP16_DISABLED_OPTIMIZERS) if precision == "fp16" else []}
    return files


def _derive(folder: Path) -> dict[str, Any]:
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelError(f"{folder}: config.json model_type {model_type!r} is not a transformers.js layout fastclip "
                         f"reads ({', '.join(FAMILIES)})")
    towers = {name: _variants(folder, stem) for name, stem in STEMS.items()}
    found = sorted(p.name for p in (folder / GRAPHS).glob("*.onnx"))
    if not any(towers.values()):
        joint = f" only the joint {GRAPHS}/{JOINT}.onnx, which needs both towers' inputs at once;" \
            if (folder / GRAPHS / f"{JOINT}.onnx").is_file() else ""
        raise ModelError(f"{folder}: holds{joint} no {GRAPHS}/vision_model.onnx or {GRAPHS}/text_model.onnx (found "
                         f"{', '.join(found)}); fastclip runs the split towers transformers.js's converter writes "
                         "with --split_modalities")
    used = {entry["path"] for files in towers.values() for entry in files.values()}
    scale, bias = _logit_scale(folder, family)
    data: dict[str, Any] = {
        "format": "fastclip", "format_version": FORMAT_VERSION, "architecture": str(model_type),
        "source": {"kind": "folder", "layout": "transformers.js", "model": str(folder), "repo": repo_of(folder),
                   "variants_not_run": [f for f in found if f.startswith(tuple(STEMS.values())) and f"{GRAPHS}/{f}"
                                        not in used],
                   "missing": {name: f"no {GRAPHS}/{STEMS[name]}.onnx (found {', '.join(found)})"
                               for name, files in towers.items() if not files}},
        "scoring": family.scoring, "logit_scale": scale, "logit_bias": bias,
    }
    dims = []
    if towers["vision"]:
        data["vision"], dim = _vision(folder, towers["vision"], family)
        dims.append(dim)
    if towers["text"]:
        data["text"], dim = _text(folder, towers["text"], family, config)
        dims.append(dim)
    if len(set(dims)) != 1:
        raise ModelError(f"{folder}: the vision tower gives {dims[0]}-d vectors, the text tower {dims[1]}-d")
    data["embed_dim"] = dims[0]
    return data


def _signature(folder: Path, files: dict[str, dict[str, Any]]) -> tuple[Path, Signature]:
    # The fp32 graph names the tower's interface; the variants keep it (fp16 keeps its io types float32).
    path = folder / next(iter(files.values()))["path"]
    return path, read_signature(path)


def _output(path: Path, signature: Signature, name: str) -> Port:
    port = next((p for p in signature.outputs if p.name == name), None)
    if port is None or len(port.shape) != 2:
        raise ModelError(f"{path}: expected a (batch, dim) output {name!r}; the graph has {signature.describe()}")
    return port


def _input(path: Path, signature: Signature, name: str, rank: int) -> Port:
    port = next((p for p in signature.inputs if p.name == name), None)
    if port is None or len(port.shape) != rank:
        raise ModelError(f"{path}: expected a rank-{rank} input {name!r}; the graph has {signature.describe()}")
    return port


def _dim(port: Port, path: Path, fallback: Any) -> int:
    dim = port.shape[1] if isinstance(port.shape[1], int) else fallback
    if not isinstance(dim, int) or dim < 1:
        raise ModelError(f"{path}: the output {port.name!r} has no fixed width and config.json does not give one")
    return dim


def _fixed(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _vision(folder: Path, files: dict, family: Family) -> tuple[dict[str, Any], int]:
    path, signature = _signature(folder, files)
    pixels = _input(path, signature, "pixel_values", 4)
    if pixels.type != "float":
        raise ModelError(f"{path}: pixel_values is {pixels.type}, fastclip feeds float32 pixels")
    out = _output(path, signature, family.image_output)
    cfg_path = folder / "preprocessor_config.json"
    cfg = read_json(cfg_path)
    if not cfg:
        raise ModelError(f"{folder}: no preprocessor_config.json: the image tower's preprocessing is unknown")
    try:
        image = from_processor_config(cfg)
    except ValueError as exc:
        raise ModelError(f"{cfg_path}: {exc}") from None
    factor = cfg.get("rescale_factor", 1 / 255)
    if not cfg.get("do_rescale", True) or not cfg.get("do_normalize", True) or not isinstance(factor, (int, float)) \
            or not math.isclose(factor, 1 / 255, rel_tol=1e-9):
        raise ModelError(f"{cfg_path}: fastclip reproduces pixels rescaled by 1/255 then normalized (do_rescale="
                         f"{cfg.get('do_rescale')}, rescale_factor={factor}, do_normalize={cfg.get('do_normalize')})")
    side = pixels.shape[-1]
    if isinstance(side, int) and side != image["image_size"]:
        raise ModelError(f"{path}: the graph takes {side}px images, preprocessor_config.json gives "
                         f"{image['image_size']}px")
    spec = {"input_name": pixels.name, "output_name": out.name, "files": files, "batch": _fixed(pixels.shape[0]),
            **image, "mean": cfg.get("image_mean", list(family.mean)), "std": cfg.get("image_std", list(family.std)),
            # transformers' image processors: RGB first (transparency onto white), crop offset floored.
            "crop_offset": "floor", "convert_rgb": "before_resize"}
    return spec, _dim(out, path, None)


def _text(folder: Path, files: dict, family: Family, config: dict) -> tuple[dict[str, Any], int]:
    path, signature = _signature(folder, files)
    ids = _input(path, signature, "input_ids", 2)
    if ids.type not in ("int64", "int32"):
        raise ModelError(f"{path}: input_ids is {ids.type}; expected int64 or int32 token ids")
    mask = next((p for p in signature.inputs if p.name == "attention_mask"), None)
    out = _output(path, signature, family.text_output)
    facts = tokenizer_facts(folder)
    text_cfg = config.get("text_config") or {}
    limits = [facts.model_max_length, text_cfg.get("max_position_embeddings"), _fixed(ids.shape[1])]
    limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
    if not limits:
        raise ModelError(f"{folder}: no context length in tokenizer_config.json (model_max_length) or config.json "
                         "(text_config.max_position_embeddings)")
    eos = facts.eos_token_id if facts.eos_token_id is not None else facts.sep_token_id
    pad = facts.pad_token_id if facts.pad_token_id is not None else eos
    bos = next((v for v in (facts.bos_token_id, pad, eos) if v is not None), None)
    if eos is None or pad is None:
        raise ModelError(f"{folder}: tokenizer_config.json names no end (eos/sep) or pad token")
    spec = {
        "input_name": ids.name, "output_name": out.name, "files": files, "batch": _fixed(ids.shape[0]),
        "tokenizer": "tokenizer.json", "cleaning": "none", "context_length": min(limits),
        "dynamic_length": not family.pad_to_context and _fixed(ids.shape[1]) is None,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "pooling": family.pooling,
        "attention_mask_input": mask.name if mask is not None else None, "padding_side": facts.padding_side,
        "ids_dtype": ids.type,
    }
    return spec, _dim(out, path, config.get("projection_dim") if family.scoring == "softmax" else text_cfg.get("hidden_size"))


def _logit_scale(folder: Path, family: Family) -> tuple[float | None, float | None]:
    """(exp(logit_scale), logit_bias) as the joint graph applies them to its logits, where the repo ships one;
    else the known value for the repo (origin.KNOWN_LOGIT_SCALES), else (None, None)."""
    for suffix in ("", "_fp16", "_quantized"):
        path = folder / GRAPHS / f"{JOINT}{suffix}.onnx"
        if path.is_file():
            scale, bias = logits_affine(read_signature(path, nodes=True))
            if scale is not None and (bias is not None or family.scoring == "softmax"):
                return scale, bias
            break
    return known_logit_scale(folder), None


# Ops that pass the logits through unchanged in value (the exporter's transposes and casts).
_PASS = ("Transpose", "Identity", "Cast")


def logits_affine(signature: Signature) -> tuple[float | None, float | None]:
    """(scale, bias) of `logits = scale * cos + bias` in a joint CLIP/SigLIP graph, or (None, None).

    Read where the graph applies them, walking back from its `logits_per_text` (or `logits_per_image`) output:
    an Add of a one-float tensor is the bias; a Mul by the Exp of a one-float tensor is the scale (transformers
    keeps its log as the parameter), or by a one-float tensor that a constant folding already exponentiated.
    Names are no guide: the exporter renames a parameter that goes through `.to(device)` after its consumer
    (SigLIP's logit_scale becomes "onnx::Exp_809").
    """
    producer = {out: node for node in signature.nodes for out in node.outputs}
    scalars = signature.scalars

    def source(name: str) -> str:  # back through value-preserving ops
        for _ in range(8):
            node = producer.get(name)
            if node is None or node.op not in _PASS or not node.inputs:
                return name
            name = node.inputs[0]
        return name

    def value(name: str) -> float | None:  # a one-float tensor, or the Exp of one
        name = source(name)
        if name in scalars:
            return scalars[name]
        node = producer.get(name)
        if node is not None and node.op == "Exp" and node.inputs and source(node.inputs[0]) in scalars:
            return math.exp(scalars[source(node.inputs[0])])
        return None

    for start in ("logits_per_text", "logits_per_image"):
        node, bias = producer.get(source(start)), None
        if node is not None and node.op == "Add" and len(node.inputs) == 2:
            found = [(value(a), b) for a, b in (node.inputs, node.inputs[::-1]) if source(a) in scalars]
            if len(found) == 1:
                bias, node = found[0][0], producer.get(source(found[0][1]))
        if node is not None and node.op == "Mul" and len(node.inputs) == 2:
            scale = [v for v in map(value, node.inputs) if v is not None]
            if len(scale) == 1:
                return scale[0], bias
    return None, None
