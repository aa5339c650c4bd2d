"""Load an open_clip model as a `Source`, from a `Plan` (open_clip_config.resolve: the architecture, the
weights - a tag, a checkpoint file or none - and the preprocessing, resolved and checked once).

The image settings the export records and the reference transform that verifies it come from the same
preprocess cfg (the plan's), and the built model is checked to carry that cfg too.
"""

from __future__ import annotations

import functools
import logging
import urllib.error
from pathlib import Path

import torch
from torch import nn

from fastclip import hub
from fastclip.errors import ExportError, first_line

from .open_clip_config import Plan, config_problem, image_settings, resolve_arch, text_cfg, vision_problem
from .open_clip_tokenizer import VISION_ONLY, text_tokenizer
from .open_clip_towers import HFTextTower, OpenClipTextTower, check_blocks, vision_module
from .source import NO_TEXT, Source
from .torchvision_compat import import_open_clip

# open_clip's HF text towers (hf_model.py arch_dict) whose forward HFTextTower exports as it runs.
HF_TEXT_MODEL_TYPES = ("roberta", "xlm-roberta", "mt5", "bert", "m2m_100")


def count_parameters(arch: str, towers: tuple[str, ...] = ("vision", "text")) -> tuple[int, int]:
    """(vision, text) parameter counts of open_clip:ARCH, checked from its config first (a refused config
    may need the network just to be built); see plan_parameters."""
    arch = resolve_arch(arch)
    problem = config_problem(arch) if "text" in towers else vision_problem(arch)
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    return _count(arch, towers)


def plan_parameters(plan: Plan) -> tuple[int, int]:
    """(vision, text) parameter counts of a resolved plan (text 0 for the image tower alone), from a model
    built on the meta device: no memory, no weights, a fraction of a second even for ViT-bigG-14."""
    return _count(plan.arch, plan.towers)


def _count(arch: str, towers: tuple[str, ...]) -> tuple[int, int]:
    open_clip = import_open_clip()
    if "text" not in towers:  # the image tower alone: a text tower may need the network just to be built
        from open_clip.model import _build_vision_tower

        cfg = open_clip.get_model_config(arch)
        with torch.device("meta"):
            visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        return sum(p.numel() for p in visual.parameters()), 0
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "No pretrained weights loaded": expected here
    hf_name = text_cfg(arch).get("hf_model_name")
    offline = hub.go_offline_if_unreachable() if hf_name else None  # its config.json comes from the hub
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta", pretrained_text=False)
    except Exception as exc:
        if not hf_name:
            raise
        if offline is not None:
            raise ExportError(hub.not_cached(f"open_clip:{arch}: the text model config {hf_name!r}", offline,
                                             f"run the export where the hub is reachable once, or {VISION_ONLY}")) from None
        raise ExportError(f"open_clip:{arch}: could not get the text model config {hf_name!r}: "
                          f"{first_line(exc)[:200]} ({VISION_ONLY})") from None
    finally:
        root.setLevel(level)
    vision = sum(p.numel() for p in model.visual.parameters())
    return vision, sum(p.numel() for p in model.parameters()) - vision


def _text_tower(arch: str, model: nn.Module) -> nn.Module:
    """The export wrapper of the text tower; its `dynamic` says whether padding to the
    longest text of a batch gives the vectors of full-context padding, `pool_type` how it pools."""
    # CLIP keeps the text modules on the model itself; CustomTextCLIP and CoCa have them under .text.
    holder = getattr(model, "text", None)
    if holder is not None and type(holder).__name__ == "HFTextEncoder":
        config = holder.config
        if config.model_type not in HF_TEXT_MODEL_TYPES:
            raise ExportError(f"open_clip:{arch}: Hugging Face text model type {config.model_type!r} is not supported "
                              f"({', '.join(HF_TEXT_MODEL_TYPES)})")
        tower = HFTextTower(holder)
        tower.dynamic = True  # the tower masks its own padding (ids != pad_token_id) in attention and pooling
        tower.pool_type = {"MeanPooler": "mean", "MaxPooler": "max"}.get(type(holder.pooler).__name__, "cls")
        if tower.pool_type == "max":
            raise ExportError(f"open_clip:{arch}: max pooling over a Hugging Face text model is not supported")
        return tower
    if holder is not None:
        if not hasattr(holder, "token_embedding"):
            raise ExportError(f"open_clip:{arch} has a {type(holder).__name__} text tower; not supported")
        parts = holder
        pool_type, eos_id = holder.pool_type, holder.eos_id
        extra = dict(cls_emb=holder.cls_emb, pad_mask=holder.use_pad_mask, pad_id=holder.pad_id,
                     correct_cls_mask=getattr(holder, "correct_cls_mask", False))
    else:
        parts = model
        pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
        extra = {}
    if pool_type not in ("argmax", "eos", "last", "first"):
        raise ExportError(f"open_clip:{arch}: text pooling {pool_type!r} is not supported (argmax, eos, last, first)")
    problem = check_blocks(parts.transformer)
    if problem:
        raise ExportError(f"open_clip:{arch}: text tower: {problem}")
    return OpenClipTextTower(parts.token_embedding, parts.positional_embedding, parts.transformer,
                             parts.ln_final, parts.text_projection, parts.attn_mask, pool_type, eos_id, **extra)


def load_open_clip(plan: Plan) -> Source:
    """The model of `plan` (open_clip_config.resolve) as a Source: weights loaded, the image settings and
    the reference transform from the plan's preprocessing, the text tower's tokenizer plan."""
    open_clip = import_open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    arch, weights = plan.arch, plan.weights
    # The tokenizer before the weights: offline, a hub tokenizer that is not cached fails in a moment.
    tokenizer = text_tokenizer(arch) if "text" in plan.towers else None
    # A tag is fetched from the hub (cached after the first time); a file or `none` needs no network.
    offline = hub.go_offline_if_unreachable() if weights is not None and not Path(weights).is_file() else None
    root = logging.getLogger()
    level = root.level
    if offline is not None:
        root.setLevel(logging.CRITICAL)  # open_clip logs the download failure that the error below reports
    # The plan's preprocessing over what open_clip gives the weights: for a tag the same cfg, for random
    # weights or a checkpoint file the tag they follow (--preprocess). The size stays the tower's own.
    force = {k: v for k, v in plan.pre.items() if k != "size"}
    try:
        if "text" not in plan.towers and weights is None and text_cfg(arch).get("hf_model_name"):
            model = _image_tower_alone(arch, force)
        else:
            # pretrained_text=False: a Hugging Face text tower is built from its config alone (the CLIP checkpoint,
            # or random weights for 'none', fill it); True would download the text model's own weights.
            model = open_clip.create_model(arch, pretrained=weights, pretrained_text=False, force_preprocess_cfg=force)
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

    built = open_clip.get_model_preprocess_cfg(model)
    image = plan.image
    if image_settings(built) != image:  # the manifest must describe the transform that verifies the export
        raise ExportError(f"open_clip:{arch}: open_clip built the model with preprocessing {image_settings(built)}, "
                          f"its configs read {image}")
    visual = model.visual
    logit_bias = getattr(model, "logit_bias", None)
    pretrained = "none" if weights is None else (Path(weights).name if Path(weights).is_file() else weights)
    description = {"kind": "open_clip", "model": arch, "pretrained": pretrained}
    if plan.preprocess is not None and plan.preprocess != weights:
        description["preprocess"] = plan.preprocess  # the tag whose preprocessing these weights follow
    vision = dict(
        kind="open_clip",
        description=description,
        architecture=arch,
        logit_scale=float(model.logit_scale.detach().exp().reshape(-1)[0]),
        logit_bias=None if logit_bias is None else float(logit_bias.detach().reshape(-1)[0]),
        vision=vision_module(visual),
        **image,
        # open_clip gives sigmoid-trained models (SigLIP's loss) a learned logit_bias; CLIP's softmax has none.
        scoring="softmax" if logit_bias is None else "sigmoid",
        preprocess=image_transform_v2(PreprocessCfg(**built), is_train=False),
        reference_vision=functools.partial(model.encode_image, normalize=False),  # CoCa's normalizes by default
    )
    if tokenizer is None:
        with torch.no_grad():  # the text tower is not exported: free its weights before tracing
            for name, child in model.named_children():
                for t in child.parameters() if name != "visual" else ():
                    t.data = torch.empty(0, dtype=t.dtype)
        return Source(**vision, embed_dim=int((open_clip.get_model_config(arch) or {}).get("embed_dim")), **NO_TEXT)
    text = _text_tower(arch, model)
    with torch.no_grad():
        embed_dim = int(text(tokenizer.tokenize(["a"])).shape[-1])
    return Source(
        **vision,
        embed_dim=embed_dim,
        text=text,
        **tokenizer.source_fields(),
        pooling=text.pool_type,
        dynamic_length=text.dynamic,
        # normalize=False: CoCa's encode_text normalizes by default, the graphs give unnormalized features.
        reference_text=lambda ids: model.encode_text(ids, normalize=False),
    )


class _ImageModel(nn.Module):
    """An open_clip model's image side alone: what the export reads from a model (visual, logit scale
    and bias, encode_image), without its text tower."""

    def __init__(self, visual: nn.Module, init_logit_scale: float, init_logit_bias: float | None):
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.ones([]) * init_logit_bias)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        features = features[0] if isinstance(features, tuple) else features
        return nn.functional.normalize(features, dim=-1) if normalize else features


def _image_tower_alone(arch: str, preprocess: dict) -> nn.Module:
    """ARCH's image tower with random weights, its text tower never built: a Hugging Face text tower
    fetches its config from the hub just to be built. CLIP and CustomTextCLIP build the image tower
    first, so the seeded weights equal create_model's; `preprocess` is set over open_clip's defaults."""
    from dataclasses import asdict

    import numpy as np
    from open_clip.model import _build_vision_tower, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = import_open_clip().get_model_config(arch)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    model = _ImageModel(visual, cfg.get("init_logit_scale", np.log(1 / 0.07)), cfg.get("init_logit_bias"))
    set_model_preprocess_cfg(model, merge_preprocess_dict(asdict(PreprocessCfg(size=visual.image_size)), preprocess))
    return model


def _is_hub_error(exc: Exception) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return False
    return isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError))
