"""Load an open_clip model as a `Source`: `open_clip:ARCH` with a tag, a checkpoint file or `none`.

ARCH is a registered open_clip architecture (`open_clip.list_models()`, including configs added with
`open_clip.add_model_config`) or a path to a model-config JSON file, which is registered under its
file stem - the way to export a custom architecture from the command line.
"""

from __future__ import annotations

import difflib
import json
import urllib.error
from pathlib import Path

import torch
from torch import nn

from fastclip import hub
from fastclip.errors import ExportError, first_line

from .open_clip_towers import OpenClipTextTower, OpenClipVisionTower, check_blocks
from .source import Source
from .torchvision_compat import import_open_clip


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f"; close matches: {', '.join(close)}" if close else ""


def resolve_arch(arch: str) -> str:
    open_clip = import_open_clip()
    path = Path(arch)
    if arch.endswith(".json"):
        if not path.is_file():
            raise ExportError(f"open_clip model config {arch} not found")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"open_clip model config {arch} is unreadable: {exc}") from None
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ExportError(f"{arch} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    models = open_clip.list_models()
    if arch not in models:
        raise ExportError(f"unknown open_clip architecture {arch!r}{_close(arch, models)}")
    return arch


def _resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    open_clip = import_open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        hint = f" (one of: {', '.join(tags)})" if tags else ""
        raise ExportError(f"open_clip:{arch} needs --pretrained TAG{hint}, a checkpoint file, or 'none' for random weights")
    if pretrained.lower() == "none":
        return None
    if pretrained in tags or Path(pretrained).is_file():
        return pretrained
    if not tags:
        raise ExportError(f"open_clip:{arch} has no pretrained tags and {pretrained!r} is not a file; use a checkpoint file or 'none'")
    raise ExportError(f"unknown pretrained tag {pretrained!r} for open_clip:{arch}{_close(pretrained, tags)}"
                      f" (available: {', '.join(tags)})")


CLIP_VOCAB = 49408


def config_problem(arch: str, tag: str | None = None) -> str | None:
    """Why open_clip:ARCH (with pretrained `tag`) cannot be exported exactly, read from open_clip's
    model config and the tag's preprocessing alone - no weights, no model - or None when the export
    goes ahead. `load_open_clip` checks the built model again; this is what `--list` shows."""
    open_clip = import_open_clip()
    cfg = open_clip.get_model_config(arch) or {}
    text, vision = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    if "multimodal_cfg" in cfg:
        return "CoCa: its text tower appends a class token for the contrastive embedding; not supported"
    if text.get("hf_model_name"):
        return f"text tower is the Hugging Face model {text['hf_model_name']}; only open_clip's own text transformer is supported"
    if text.get("hf_tokenizer_name") or text.get("vocab_size", CLIP_VOCAB) != CLIP_VOCAB:
        name = text.get("hf_tokenizer_name") or f"a {text.get('vocab_size')}-token vocabulary"
        return f"tokenizer {name} is not CLIP's BPE; only open_clip's CLIP BPE tokenizer is reproduced"
    kwargs = text.get("tokenizer_kwargs") or {}
    if kwargs.get("clean", "lower") != "lower" or kwargs.get("reduction_mask"):
        return f"tokenizer options {kwargs} are not reproduced (only lower-case cleaning, no token reduction)"
    if text.get("no_causal_mask"):
        return "bidirectional text tower (no causal mask): padding would change the vectors"
    if text.get("embed_cls"):
        return "text tower with a class token is not supported"
    if text.get("pool_type", "argmax") not in ("argmax", "eos"):
        return f"text pooling {text['pool_type']!r} is not supported (only argmax, eos)"
    size = vision.get("image_size", 224)
    if isinstance(size, (tuple, list)) and len(set(size)) != 1:
        return f"non-square input {tuple(size)} is not supported"
    pre = dict(cfg.get("preprocess_cfg", {}))
    if tag is not None and not Path(tag).is_file():
        from open_clip.pretrained import get_pretrained_cfg

        pre.update({k: v for k, v in get_pretrained_cfg(arch, tag).items() if k in ("resize_mode", "interpolation")})
    resize_mode, interpolation = pre.get("resize_mode", "shortest"), pre.get("interpolation", "bicubic")
    if resize_mode != "shortest" or interpolation != "bicubic":
        where = f"pretrained {tag!r} preprocesses" if tag else "preprocesses"
        return (f"{where} with resize_mode={resize_mode!r}, interpolation={interpolation!r}; fastclip only "
                "reproduces shortest-side bicubic resize + center crop")
    return None


def vision_family(arch: str) -> str:
    """The kind of vision tower, as open_clip's config describes it."""
    vision = (import_open_clip().get_model_config(arch) or {}).get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return f"timm {vision['timm_model_name']}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "ModifiedResNet"
    return "ViT"


def architectures() -> list[dict]:
    """Every architecture open_clip lists, with whether (and why not) it exports, and the pretrained
    tags refused for their own preprocessing."""
    open_clip = import_open_clip()
    rows = []
    for arch in open_clip.list_models():
        problem = config_problem(arch)
        refused_tags = {}
        if problem is None:
            for tag in open_clip.list_pretrained_tags_by_model(arch):
                tag_problem = config_problem(arch, tag)
                if tag_problem:
                    refused_tags[tag] = tag_problem
        cfg = open_clip.get_model_config(arch) or {}
        rows.append({"architecture": arch, "problem": problem, "refused_tags": refused_tags,
                     "vision": vision_family(arch), "image_size": cfg.get("vision_cfg", {}).get("image_size", 224),
                     "embed_dim": cfg.get("embed_dim"), "quick_gelu": bool(cfg.get("quick_gelu"))})
    return rows


def count_parameters(arch: str) -> tuple[int, int]:
    """(vision, text) parameter counts of open_clip:ARCH, from a model built on the meta device:
    no memory, no weights, a fraction of a second even for ViT-bigG-14."""
    import logging

    open_clip = import_open_clip()
    arch = resolve_arch(arch)
    problem = config_problem(arch)  # before building: a refused config may need the network to build
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "No pretrained weights loaded": expected here
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta")
    finally:
        root.setLevel(level)
    vision = sum(p.numel() for p in model.visual.parameters())
    return vision, sum(p.numel() for p in model.parameters()) - vision


def _check_preprocessing(arch: str, cfg: dict) -> tuple[int, tuple, tuple]:
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ExportError(f"open_clip:{arch} uses a non-square input {tuple(size)}; not supported")
        size = size[0]
    resize_mode = cfg.get("resize_mode", "shortest")
    interpolation = cfg.get("interpolation", "bicubic")
    if resize_mode != "shortest" or interpolation != "bicubic":
        raise ExportError(
            f"open_clip:{arch} preprocesses with resize_mode={resize_mode!r}, interpolation={interpolation!r}; "
            "fastclip only reproduces shortest-side bicubic resize + center crop"
        )
    return int(size), tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def _text_tower(arch: str, model: nn.Module) -> tuple[OpenClipTextTower, int, int]:
    # CLIP keeps the text modules on the model itself; CustomTextCLIP has them under .text.
    holder = getattr(model, "text", None)
    if holder is not None:
        if not hasattr(holder, "token_embedding"):
            raise ExportError(f"open_clip:{arch} has a {type(holder).__name__} text tower; only open_clip's own text transformer is supported")
        if getattr(holder, "cls_emb", None) is not None or getattr(holder, "use_pad_mask", False):
            raise ExportError(f"open_clip:{arch}: text towers with a class token or padding mask are not supported")
        parts = holder
        pool_type, eos_id = holder.pool_type, holder.eos_id
    else:
        parts = model
        pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
    if parts.attn_mask is None:
        # Without a causal mask the padding changes every token, so batch-longest padding would
        # silently change the vectors.
        raise ExportError(f"open_clip:{arch}: bidirectional text towers are not supported")
    if pool_type not in ("argmax", "eos"):
        raise ExportError(f"open_clip:{arch}: text pooling {pool_type!r} is not supported (only argmax, eos)")
    problem = check_blocks(parts.transformer)
    if problem:
        raise ExportError(f"open_clip:{arch}: text tower: {problem}")
    tower = OpenClipTextTower(parts.token_embedding, parts.positional_embedding, parts.transformer,
                              parts.ln_final, parts.text_projection, parts.attn_mask, pool_type, eos_id)
    return tower, parts.transformer.width, parts.transformer.resblocks[0].attn.num_heads


def clip_tokenizer(arch: str):
    """open_clip's tokenizer for `arch`, refused unless it is the CLIP BPE tokenizer that the runtime's
    tokenizer.json plus "open_clip" cleaning reproduces."""
    open_clip = import_open_clip()
    tokenizer = open_clip.get_tokenizer(arch)
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.vocab_size != CLIP_VOCAB \
            or tokenizer.clean_fn.__name__ != "_clean_lower" or tokenizer.reduction_fn is not None:
        raise ExportError(f"open_clip:{arch} uses a {type(tokenizer).__name__} tokenizer variant; only open_clip's CLIP BPE tokenizer is supported")
    return tokenizer


def load_open_clip(arch: str, pretrained: str | None) -> Source:
    open_clip = import_open_clip()
    arch = resolve_arch(arch)
    weights = _resolve_pretrained(arch, pretrained)
    problem = config_problem(arch, weights)
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    # A tag is fetched from the hub (cached after the first time); a file or `none` needs no network.
    offline = hub.go_offline_if_unreachable() if weights is not None and not Path(weights).is_file() else None
    import logging

    root = logging.getLogger()
    level = root.level
    if offline is not None:
        root.setLevel(logging.CRITICAL)  # open_clip logs the download failure that the error below reports
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    except Exception as exc:
        if offline is not None:
            raise ExportError(hub.not_cached(
                f"open_clip:{arch} weights {weights!r}", offline, "run the export where the hub is reachable, "
                "or pass a checkpoint file (--pretrained FILE)")) from None
        if isinstance(exc, (OSError, urllib.error.URLError)) or _is_hub_error(exc):
            raise ExportError(f"could not download open_clip:{arch} weights {weights!r}: {first_line(exc)}") from None
        raise ExportError(f"could not load open_clip:{arch} with {weights!r}: {first_line(exc)}") from None
    finally:
        root.setLevel(level)
    model.eval()

    image_size, mean, std = _check_preprocessing(arch, open_clip.get_model_preprocess_cfg(model))
    tokenizer = clip_tokenizer(arch)
    context_length = int(tokenizer.context_length)

    text, text_width, text_heads = _text_tower(arch, model)
    visual = model.visual
    vision_width = getattr(getattr(visual, "transformer", None), "width", 0)
    logit_bias = getattr(model, "logit_bias", None)

    def write_tokenizer(out_dir: Path) -> None:
        from .tokenizer_files import write_open_clip_tokenizer

        write_open_clip_tokenizer(out_dir, context_length)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts).long()

    with torch.no_grad():
        embed_dim = int(text(tokenizer(["a"])).shape[-1])
    return Source(
        kind="open_clip",
        description={"kind": "open_clip", "model": arch,
                     "pretrained": "none" if weights is None else (Path(weights).name if Path(weights).is_file() else weights)},
        architecture=arch,
        embed_dim=embed_dim,
        logit_scale=float(model.logit_scale.detach().exp().reshape(-1)[0]),
        logit_bias=None if logit_bias is None else float(logit_bias.detach().reshape(-1)[0]),
        vision=OpenClipVisionTower(visual) if OpenClipVisionTower.supports(visual) else visual,
        text=text,
        image_size=image_size,
        mean=mean,
        std=std,
        preprocess=preprocess,
        context_length=context_length,
        bos_token_id=int(tokenizer.sot_token_id),
        eos_token_id=int(tokenizer.eot_token_id),
        pad_token_id=0,  # open_clip pads with zeros; argmax pooling finds the end token anyway
        pooling=text.pool_type,
        cleaning="open_clip",
        tokenize=tokenize,
        write_tokenizer=write_tokenizer,
        vision_heads=getattr(visual, "heads", 0) or 0,
        vision_width=vision_width,
        text_heads=text_heads,
        text_width=text_width,
        reference_vision=model.encode_image,
        reference_text=model.encode_text,
    )


def _is_hub_error(exc: Exception) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return False
    return isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError))
