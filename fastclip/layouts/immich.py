"""Immich's layout (immich-app/ARCH__TAG): `visual/model.onnx` and `textual/model.onnx` beside open_clip's config.

Immich's exporter (machine-learning/export, immich_model_exporter) builds the open_clip model for ARCH with
pretrained TAG and traces `encode_image(image, normalize=True)` and `encode_text(text, normalize=True)` with
torch.onnx.export at opset 19 and no dynamic axes: the image graph takes `image` float32 (1, 3, S, S), the
text graph `text` int32 (1, context_length), both give `embedding` (1, dim), already L2-normalized. Beside
them: `config.json` = `open_clip.get_model_config(ARCH)` (embed_dim, vision_cfg, text_cfg), `visual/
preprocess_cfg.json` = `open_clip.get_model_preprocess_cfg(model)` (size, mode, mean, std, interpolation,
resize_mode, fill_color: the tag's training recipe), and in `textual/` the tokenizer open_clip's config names
(`text_cfg.hf_tokenizer_name`, else OpenAI's CLIP tokenizer) saved by transformers. M-CLIP repos trace a
multilingual text encoder instead, taking `input_ids` and `attention_mask`.

The reference is open_clip: its eval transform for preprocess_cfg, its tokenizer (CLIP BPE with its own
cleaning and zero padding, or its HFTokenizer: the config's clean function, the transformers tokenizer padded
to the full context), its encode_* normalized. Immich's own server center-crops SigLIP models that were
trained on squashed images ("squash" in preprocess_cfg.json); fastclip follows preprocess_cfg.json, the
training recipe. The graphs run one image and one text per call (their batch axis is fixed at 1); the
runner feeds them row by row at any batch_size. The files hold no trained logit scale: CLIP.classify refuses
them, except where the scale is known for the repo (origin.KNOWN_LOGIT_SCALES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..manifest import FORMAT_VERSION, INTERPOLATIONS, RESIZE_MODES, Manifest
from .graph import manifest_from, read_json
from .hf_files import tokenizer_facts
from .onnx_proto import Port, Signature, read_signature
from .origin import known_logit_scale, repo_of

TOWERS = {"vision": "visual", "text": "textual"}
GRAPH = "model.onnx"
OUTPUT = "embedding"
# open_clip's clean functions by their tokenizer_kwargs name -> the runtime's cleaners (families.text).
CLEANINGS = {"lower": "lower", "whitespace": "whitespace", "canonicalize": "canonicalize"}


def matches(folder: Path) -> bool:
    return any((folder / sub / GRAPH).is_file() for sub in TOWERS.values())


def read(folder: Path) -> Manifest:
    return manifest_from(folder, _derive, "Immich")


def _derive(folder: Path) -> dict[str, Any]:
    config = read_json(folder / "config.json")
    text_cfg = config.get("text_cfg") or {}
    # open_clip gives sigmoid-trained models (SigLIP's loss) an init_logit_bias; CLIP's softmax has none.
    sigmoid = "init_logit_bias" in config
    scale = None if sigmoid else known_logit_scale(folder)
    data: dict[str, Any] = {
        "format": "fastclip", "format_version": FORMAT_VERSION, "architecture": _architecture(folder),
        "source": {"kind": "folder", "layout": "Immich", "model": str(folder), "repo": repo_of(folder),
                   "missing": {name: f"no {sub}/{GRAPH}" for name, sub in TOWERS.items()
                               if not (folder / sub / GRAPH).is_file()}},
        "scoring": "sigmoid" if sigmoid else "softmax", "logit_scale": scale, "logit_bias": None,
    }
    dims = []
    if (folder / "visual" / GRAPH).is_file():
        data["vision"], dim = _vision(folder)
        dims.append(dim)
    if (folder / "textual" / GRAPH).is_file():
        if not config:
            raise ModelError(f"{folder}: no config.json (open_clip's model config): the text tower's tokenizer "
                             "settings are unknown")
        data["text"], dim = _text(folder, text_cfg)
        dims.append(dim)
    embed_dim = config.get("embed_dim")
    if len(set(dims)) != 1 or (isinstance(embed_dim, int) and embed_dim != dims[0]):
        raise ModelError(f"{folder}: the graphs give {' and '.join(map(str, dims))}-d vectors, config.json says "
                         f"embed_dim {embed_dim}")
    data["embed_dim"] = dims[0]
    return data


def _architecture(folder: Path) -> str:
    # Immich names each repo ARCH__TAG after the open_clip architecture and pretrained tag it exported.
    repo = repo_of(folder)
    return repo.split("/", 1)[1].partition("__")[0] if repo else "unknown"


def _graph(folder: Path, sub: str) -> tuple[Path, Signature, dict[str, Any]]:
    rel = f"{sub}/{GRAPH}"
    path = folder / rel
    external = [f"{rel}_data"] if (folder / f"{rel}_data").is_file() else []
    return path, read_signature(path), {"fp32": {"path": rel, "bytes": path.stat().st_size, "external_data": external}}


def _port(ports: tuple[Port, ...], name: str) -> Port | None:
    return next((p for p in ports if p.name == name), None)


def _embedding(path: Path, signature: Signature) -> tuple[Port, int]:
    out = _port(signature.outputs, OUTPUT)
    if out is None or len(out.shape) != 2 or not isinstance(out.shape[1], int):
        raise ModelError(f"{path}: expected a (batch, dim) output {OUTPUT!r}; the graph has {signature.describe()}")
    return out, out.shape[1]


def _batch(port: Port) -> int | None:
    return port.shape[0] if isinstance(port.shape[0], int) and port.shape[0] > 0 else None


def _vision(folder: Path) -> tuple[dict[str, Any], int]:
    path, signature, files = _graph(folder, "visual")
    image = _port(signature.inputs, "image")
    if image is None or len(image.shape) != 4 or image.type != "float":
        raise ModelError(f"{path}: expected a float32 (batch, 3, S, S) input 'image'; the graph has "
                         f"{signature.describe()}")
    out, dim = _embedding(path, signature)
    cfg_path = folder / "visual" / "preprocess_cfg.json"
    pre = read_json(cfg_path)
    if not pre:
        raise ModelError(f"{folder}: no visual/preprocess_cfg.json: the image tower's preprocessing is unknown")
    size = pre.get("size", image.shape[-1])
    if isinstance(size, list) and len(set(size)) == 1:
        size = size[0]
    mode, resize, interpolation = pre.get("mode", "RGB"), pre.get("resize_mode", "shortest"), pre.get("interpolation",
                                                                                                      "bicubic")
    fill = pre.get("fill_color", 0)
    if not isinstance(size, int) or mode != "RGB" or resize not in RESIZE_MODES or interpolation not in INTERPOLATIONS \
            or isinstance(fill, bool) or not isinstance(fill, int):
        raise ModelError(f"{cfg_path}: fastclip reproduces square RGB inputs, resize_mode {', '.join(RESIZE_MODES)}, "
                         f"interpolation {', '.join(INTERPOLATIONS)} and one fill value (size={size}, mode={mode}, "
                         f"resize_mode={resize}, interpolation={interpolation}, fill_color={fill})")
    if isinstance(image.shape[-1], int) and image.shape[-1] != size:
        raise ModelError(f"{path}: the graph takes {image.shape[-1]}px images, preprocess_cfg.json says {size}")
    # open_clip broadcasts a single mean/std value to the three channels.
    mean, std = ([v] * 3 if isinstance(v, (int, float)) else v for v in (pre["mean"], pre["std"]))
    spec = {"input_name": image.name, "output_name": out.name, "files": files, "batch": _batch(image),
            "output_normalized": True, "image_size": size, "resize_mode": resize, "interpolation": interpolation,
            "mean": mean, "std": std, "fill": fill}
    return spec, dim


def _text(folder: Path, text_cfg: dict[str, Any]) -> tuple[dict[str, Any], int]:
    path, signature, files = _graph(folder, "textual")
    out, dim = _embedding(path, signature)
    ids = _port(signature.inputs, "text") or _port(signature.inputs, "input_ids")
    if ids is None or len(ids.shape) != 2 or ids.type not in ("int32", "int64"):
        raise ModelError(f"{path}: expected an int32/int64 (batch, length) input 'text' (open_clip) or 'input_ids' "
                         f"(M-CLIP); the graph has {signature.describe()}")
    facts = tokenizer_facts(folder / "textual")
    length = ids.shape[1] if isinstance(ids.shape[1], int) else None
    spec: dict[str, Any] = {"input_name": ids.name, "output_name": out.name, "files": files, "batch": _batch(ids),
                            "output_normalized": True, "tokenizer": "textual/tokenizer.json", "ids_dtype": ids.type,
                            "padding_side": facts.padding_side, "dynamic_length": False}
    if ids.name == "input_ids":  # M-CLIP: a transformers encoder, its tokenizer as is, masked mean pooling
        mask = _port(signature.inputs, "attention_mask")
        if length is None or facts.pad_token_id is None or facts.eos_token_id is None:
            raise ModelError(f"{path}: an M-CLIP text graph needs a fixed length and a tokenizer with pad and end "
                             f"tokens; the graph has {signature.describe()}")
        spec.update(cleaning="none", context_length=length, pooling="mean", pad_token_id=facts.pad_token_id,
                    eos_token_id=facts.eos_token_id,
                    bos_token_id=facts.bos_token_id if facts.bos_token_id is not None else facts.pad_token_id,
                    attention_mask_input=mask.name if mask is not None else None)
        return spec, dim
    spec.update(_open_clip_tokenizer(folder, text_cfg, facts))
    if length is not None and length != spec["context_length"]:
        raise ModelError(f"{path}: the graph takes {length} tokens, config.json's text_cfg.context_length is "
                         f"{spec['context_length']}")
    return spec, dim


def _open_clip_tokenizer(folder: Path, text_cfg: dict[str, Any], facts) -> dict[str, Any]:
    """The text spec fields of open_clip's tokenizer for `text_cfg`: its SimpleTokenizer (CLIP BPE, lower-case
    cleaning, zero padding) or its HFTokenizer (clean function, strip_sep_token, the tokenizer's own padding)."""
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    where = f"{folder / 'config.json'}: text_cfg"
    if text_cfg.get("tokenizer_mode") or kwargs.get("reduction_mask"):
        raise ModelError(f"{where} rearranges tokens after tokenizing (tokenizer_mode / reduction_mask); not reproduced")
    common = {"context_length": int(text_cfg.get("context_length", 77)), "pooling": text_cfg.get("pool_type", "argmax")}
    if not text_cfg.get("hf_tokenizer_name"):
        if kwargs.get("clean", "lower") != "lower" or facts.bos_token_id is None or facts.eos_token_id is None:
            raise ModelError(f"{where}: open_clip's CLIP tokenizer with clean={kwargs.get('clean')!r} and the textual/ "
                             "tokenizer's start/end tokens are needed; not what this folder holds")
        # open_clip's SimpleTokenizer: its own cleaning (ftfy, unescape, lower) and zeros after the end token.
        return {**common, "cleaning": "open_clip", "bos_token_id": facts.bos_token_id,
                "eos_token_id": facts.eos_token_id, "pad_token_id": 0, "padding_side": "right"}
    clean = CLEANINGS.get(kwargs.get("clean", "whitespace"))
    eos = facts.eos_token_id if facts.eos_token_id is not None else facts.sep_token_id
    if clean is None or eos is None or facts.pad_token_id is None:
        raise ModelError(f"{where}: tokenizer clean={kwargs.get('clean')!r} with the textual/ tokenizer's end and pad "
                         "tokens is needed; not what this folder holds")
    strip = facts.sep_token_id if kwargs.get("strip_sep_token") else None
    return {**common, "cleaning": clean, "eos_token_id": eos, "pad_token_id": facts.pad_token_id,
            "bos_token_id": next(v for v in (facts.bos_token_id, facts.pad_token_id) if v is not None),
            "strip_sep_token_id": strip}
