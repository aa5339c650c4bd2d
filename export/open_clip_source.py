"""Load an open_clip model as a `Source`: `open_clip:ARCH` with a tag, a checkpoint file or `none`.

ARCH is a registered open_clip architecture (`open_clip.list_models()`, including configs added with
`open_clip.add_model_config`) or a path to a model-config JSON file, which is registered under its
file stem - the way to export a custom architecture from the command line.
"""

from __future__ import annotations

import difflib
import functools
import json
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fastclip import hub, manifest
from fastclip.errors import ExportError, first_line

from .open_clip_towers import HFTextTower, OpenClipTextTower, check_blocks, vision_module
from .source import NO_TEXT, Source
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
    problem = text_problem(cfg.get("text_cfg", {}))
    if problem:
        return problem
    return vision_problem(arch, tag)


def vision_problem(arch: str, tag: str | None = None) -> str | None:
    """Why the image tower of open_clip:ARCH (with pretrained `tag`) cannot be exported exactly, or None."""
    vision = (import_open_clip().get_model_config(arch) or {}).get("vision_cfg", {})
    size = vision.get("image_size", 224)
    if isinstance(size, (tuple, list)) and len(set(size)) != 1:
        return f"non-square input {tuple(size)} is not supported"
    return _preprocess_problem(preprocess_cfg(arch, tag), tag)


def preprocess_cfg(arch: str, tag: str | None = None) -> dict:
    """open_clip's eval preprocessing of ARCH with pretrained `tag`, as create_model_and_transforms
    merges it: PreprocessCfg's defaults, the model config's preprocess_cfg, then the tag's entries."""
    open_clip = import_open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = open_clip.get_model_config(arch) or {}
    pre = merge_preprocess_dict(PreprocessCfg(), cfg.get("preprocess_cfg", {}))
    if "image_size" in cfg.get("vision_cfg", {}):
        pre["size"] = cfg["vision_cfg"]["image_size"]
    if tag is not None and not Path(tag).is_file():
        from open_clip.pretrained import get_pretrained_cfg

        pre = merge_preprocess_dict(pre, get_pretrained_cfg(arch, tag))
    return pre


def _preprocess_problem(pre: dict, tag: str | None) -> str | None:
    where = f"pretrained {tag!r} preprocesses" if tag else "preprocesses"
    if pre.get("resize_mode", "shortest") not in manifest.RESIZE_MODES:
        return f"{where} with resize_mode={pre['resize_mode']!r}; fastclip reproduces {', '.join(manifest.RESIZE_MODES)}"
    if pre.get("interpolation", "bicubic") not in manifest.INTERPOLATIONS:
        return (f"{where} with interpolation={pre['interpolation']!r}; fastclip reproduces "
                f"{', '.join(manifest.INTERPOLATIONS)}")
    fill = pre.get("fill_color", 0)
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        return f"{where} with fill_color={fill!r}; fastclip pads with one value 0-255 in every band"
    return None


# open_clip's HF text towers (hf_model.py arch_dict) whose forward HFTextTower exports as it runs.
HF_TEXT_MODEL_TYPES = ("roberta", "xlm-roberta", "mt5", "bert", "m2m_100")


def text_problem(text: dict) -> str | None:
    """Why open_clip's text config `text` cannot be reproduced exactly, or None."""
    kwargs = text.get("tokenizer_kwargs") or {}
    if text.get("tokenizer_mode"):
        return f"tokenizer_mode {text['tokenizer_mode']!r} (tokens rearranged after tokenizing) is not reproduced"
    if kwargs.get("reduction_mask"):
        return f"tokenizer token reduction {kwargs['reduction_mask']!r} is not reproduced"
    if not text.get("hf_tokenizer_name") and kwargs.get("clean", "lower") != "lower":
        return f"CLIP BPE tokenizer with clean={kwargs['clean']!r} is not reproduced (only 'lower')"
    if not text.get("hf_model_name") and text.get("pool_type", "argmax") not in ("argmax", "eos", "last", "first"):
        return f"text pooling {text['pool_type']!r} is not supported (argmax, eos, last, first)"
    return None


@dataclass
class TokenizerPlan:
    """How the runtime reproduces open_clip's tokenizer for one model: the manifest's text fields, the
    reference call and the writer of text/tokenizer.json & co."""

    tokenize: Callable[[list[str]], torch.Tensor]
    write: Callable[[Path], None]
    context_length: int
    cleaning: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    padding_side: str = "right"
    strip_sep_token_id: int | None = None
    language: str | None = None
    languages: tuple[str, ...] = ()

    def source_fields(self) -> dict:
        """The `Source` fields this plan fills (its text side, but for the tower's own pooling and padding)."""
        return dict(context_length=self.context_length, cleaning=self.cleaning, bos_token_id=self.bos_token_id,
                    eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, tokenize=self.tokenize,
                    write_tokenizer=self.write, padding_side=self.padding_side,
                    strip_sep_token_id=self.strip_sep_token_id, language=self.language, languages=self.languages)


# open_clip's clean functions (tokenizer.get_clean_fn) -> the runtime's cleaners (fastclip.families.text).
_CLEAN_NAMES = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}


def text_tokenizer(arch: str) -> TokenizerPlan:
    """open_clip's tokenizer for `arch` and how the runtime reproduces it: the CLIP BPE SimpleTokenizer
    (rebuilt as tokenizer.json, "open_clip" cleaning) or an HFTokenizer (its transformers fast tokenizer's
    own tokenizer.json, open_clip's clean function, strip_sep_token, the NLLB source language)."""
    open_clip = import_open_clip()
    name = _text_cfg(arch).get("hf_tokenizer_name")
    offline = hub.go_offline_if_unreachable() if name else None  # transformers fetches it: fail fast offline
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # transformers / huggingface_hub: offline, not cached, no such repo
        if offline is not None:
            raise ExportError(hub.not_cached(f"open_clip:{arch}: the tokenizer {name!r}", offline,
                                             "run the export where the hub is reachable once")) from None
        raise ExportError(f"open_clip:{arch}: could not get the tokenizer {name or arch!r}: "
                          f"{first_line(exc)[:200]}") from None
    if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        if tokenizer.vocab_size != CLIP_VOCAB or tokenizer.clean_fn.__name__ != "_clean_lower" \
                or tokenizer.reduction_fn is not None:
            raise ExportError(f"open_clip:{arch} uses a SimpleTokenizer variant; only open_clip's CLIP BPE tokenizer "
                              "with lower-case cleaning is supported")
        context_length = int(tokenizer.context_length)

        def write_clip(out_dir: Path) -> None:
            from .tokenizer_files import write_open_clip_tokenizer

            write_open_clip_tokenizer(out_dir, context_length)

        return TokenizerPlan(
            tokenize=lambda texts: tokenizer(texts).long(), write=write_clip, context_length=context_length,
            cleaning="open_clip", bos_token_id=int(tokenizer.sot_token_id), eos_token_id=int(tokenizer.eot_token_id),
            pad_token_id=0,  # open_clip pads with zeros; argmax pooling finds the end token anyway
        )
    if not isinstance(tokenizer, open_clip.tokenizer.HFTokenizer) or tokenizer.tokenizer_mode:
        raise ExportError(f"open_clip:{arch} uses a {type(tokenizer).__name__} tokenizer; fastclip reproduces "
                          "open_clip's CLIP BPE tokenizer and its HFTokenizer (standard mode)")
    hf = tokenizer.tokenizer
    if getattr(hf, "backend_tokenizer", None) is None:
        raise ExportError(f"open_clip:{arch}: the Hugging Face tokenizer {type(hf).__name__} has no tokenizer.json "
                          "(not a fast tokenizer); fastclip runs tokenizer.json only")
    cleaning = _CLEAN_NAMES.get(tokenizer.clean_fn.__name__)
    if cleaning is None:
        raise ExportError(f"open_clip:{arch}: text cleaning {tokenizer.clean_fn.__name__} is not reproduced")
    languages: tuple[str, ...] = ()
    language = None
    if hasattr(tokenizer, "set_lang_fn"):
        language = str(hf.src_lang)
        codes = getattr(hf, "additional_special_tokens", None) or getattr(hf, "extra_special_tokens", None) or []
        vocab = hf.get_vocab()
        languages = tuple(str(c) for c in codes if isinstance(c, str) and c in vocab)
        if language not in languages:
            raise ExportError(f"open_clip:{arch}: the tokenizer's source language {language!r} is not among its "
                              "special tokens")
    special = {name: getattr(hf, f"{name}_token_id", None) for name in ("bos", "cls", "eos", "sep", "pad")}
    if special["eos"] is None and special["sep"] is None or special["pad"] is None:
        raise ExportError(f"open_clip:{arch}: the tokenizer has no end/separator or no pad token")

    def write_hf(out_dir: Path) -> None:
        from .tokenizer_files import write_hf_tokenizer

        write_hf_tokenizer(out_dir, hf, int(tokenizer.context_length))

    first = next((v for v in (special["bos"], special["cls"], special["pad"]) if v is not None))
    return TokenizerPlan(
        tokenize=lambda texts: tokenizer(texts).long(), write=write_hf, context_length=int(tokenizer.context_length),
        cleaning=cleaning,
        bos_token_id=int(first),  # T5 has no start token: the manifest's start id then only seeds the load probe
        eos_token_id=int(special["eos"] if special["eos"] is not None else special["sep"]),
        pad_token_id=int(special["pad"]),
        padding_side=str(hf.padding_side),
        strip_sep_token_id=int(special["sep"]) if tokenizer.strip_sep_token and special["sep"] is not None else None,
        language=language, languages=languages,
    )


def _text_cfg(arch: str) -> dict:
    return (import_open_clip().get_model_config(arch) or {}).get("text_cfg", {})


# timm trunk name (a part of it) -> vision family, first match wins. tests/test_families.py exports a
# tiny variant of each against open_clip's encode_image.
TIMM_FAMILIES = (
    ("_siglip", "SigLIP ViT"),
    ("vit_pe_core_", "PE-Core"),
    ("eva02_", "EVA02"),
    ("eva_", "EVA01"),
    ("convnext_", "ConvNeXt"),
    ("swin_", "Swin"),
    ("vitamin_", "ViTamin"),
    ("fastvit_mci", "FastViT-MCi"),
    ("vit_base_mci", "ViT-MCi"),
    ("vit_", "timm ViT"),
)


def vision_family(arch: str) -> str:
    """The kind of vision tower, as open_clip's config describes it."""
    return family_of((import_open_clip().get_model_config(arch) or {}).get("vision_cfg", {}))


def family_of(vision: dict) -> str:
    """The vision family of an open_clip `vision_cfg`."""
    name = vision.get("timm_model_name")
    if name:
        return next((family for part, family in TIMM_FAMILIES if part in name), f"timm {name}")
    if isinstance(vision.get("layers"), (list, tuple)):
        return "ModifiedResNet"
    return "ViT + attentional pooler" if vision.get("attentional_pool") else "ViT"


# Families with a tiny variant exported and compared with encode_image in CI (tests/test_families.py):
# every family open_clip's configs use. A timm trunk outside TIMM_FAMILIES is traced as is, untested.
TESTED_FAMILIES = frozenset({family for _, family in TIMM_FAMILIES} | {"ViT", "ModifiedResNet", "ViT + attentional pooler"})


def architectures(memory_available: float | None = None) -> list[dict]:
    """Every architecture open_clip lists, with whether (and why not) it exports - both towers
    ("problem"), the image tower alone ("vision_problem") - and the pretrained tags refused for their
    own preprocessing. With `memory_available` (bytes), each row also gets "peak_bytes", the
    estimated peak memory of the export that goes ahead (counted on the meta device: ~0.1 s a model)."""
    from . import memory

    open_clip = import_open_clip()
    rows = []
    for arch in open_clip.list_models():
        problem = config_problem(arch)
        vision = problem and vision_problem(arch)
        refused_tags = {}
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if vision is None:
            for tag in tags:
                tag_problem = vision_problem(arch, tag)
                if tag_problem:
                    refused_tags[tag] = tag_problem
        cfg = open_clip.get_model_config(arch) or {}
        row = {"architecture": arch, "problem": problem, "vision_problem": vision, "refused_tags": refused_tags,
               "tags": {tag: _preprocess_summary(preprocess_cfg(arch, tag)) for tag in tags},
               "vision": vision_family(arch), "image_size": cfg.get("vision_cfg", {}).get("image_size", 224),
               "embed_dim": cfg.get("embed_dim"), "quick_gelu": bool(cfg.get("quick_gelu"))}
        if memory_available is not None and vision is None:
            params = count_parameters(arch, ("vision", "text") if problem is None else ("vision",))
            row["peak_bytes"] = memory.estimate(*params, ["fp32"]).peak_bytes
        rows.append(row)
    return rows


def _preprocess_summary(pre: dict) -> str:
    mean, std = (tuple(round(float(v), 4) for v in pre[k]) for k in ("mean", "std"))
    return f"{pre['resize_mode']}, {pre['interpolation']}, mean {mean}, std {std}"


def count_parameters(arch: str, towers: tuple[str, ...] = ("vision", "text")) -> tuple[int, int]:
    """(vision, text) parameter counts of open_clip:ARCH, from a model built on the meta device:
    no memory, no weights, a fraction of a second even for ViT-bigG-14."""
    import logging

    open_clip = import_open_clip()
    arch = resolve_arch(arch)
    # before building: a refused config may need the network to build
    problem = config_problem(arch) if "text" in towers else vision_problem(arch)
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    if "text" not in towers:  # the image tower alone: a text tower may need the network just to be built
        from open_clip.model import _build_vision_tower

        cfg = open_clip.get_model_config(arch)
        with torch.device("meta"):
            visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        return sum(p.numel() for p in visual.parameters()), 0
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "No pretrained weights loaded": expected here
    hf_name = _text_cfg(arch).get("hf_model_name")
    offline = hub.go_offline_if_unreachable() if hf_name else None  # its config.json comes from the hub
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta", pretrained_text=False)
    except Exception as exc:
        if not hf_name:
            raise
        if offline is not None:
            raise ExportError(hub.not_cached(f"open_clip:{arch}: the text model config {hf_name!r}", offline,
                                             "run the export where the hub is reachable once")) from None
        raise ExportError(f"open_clip:{arch}: could not get the text model config {hf_name!r}: "
                          f"{first_line(exc)[:200]}") from None
    finally:
        root.setLevel(level)
    vision = sum(p.numel() for p in model.visual.parameters())
    return vision, sum(p.numel() for p in model.parameters()) - vision


def _check_preprocessing(arch: str, cfg: dict) -> dict:
    """The Source's image settings from the built model's preprocess cfg (what its transform uses)."""
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ExportError(f"open_clip:{arch} uses a non-square input {tuple(size)}; not supported")
        size = size[0]
    problem = _preprocess_problem(cfg, None)
    if problem:
        raise ExportError(f"open_clip:{arch} {problem}")
    mean, std = cfg["mean"], cfg["std"]
    # open_clip's image_transform broadcasts a single mean/std value to the three channels.
    mean, std = ((v,) * 3 if not isinstance(v, (list, tuple)) else v for v in (mean, std))
    return dict(image_size=int(size), mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                resize_mode=cfg.get("resize_mode", "shortest"), interpolation=cfg.get("interpolation", "bicubic"),
                fill=int(cfg.get("fill_color", 0)))


def _text_tower(arch: str, model: nn.Module) -> tuple[nn.Module, int, int]:
    """(export wrapper, width, heads) of the text tower; the wrapper's `dynamic` says whether padding to the
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
        width = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", None)
                    or getattr(config, "encoder_attention_heads"))
        return tower, width, heads
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
    tower = OpenClipTextTower(parts.token_embedding, parts.positional_embedding, parts.transformer,
                              parts.ln_final, parts.text_projection, parts.attn_mask, pool_type, eos_id, **extra)
    return tower, parts.transformer.width, parts.transformer.resblocks[0].attn.num_heads


def load_open_clip(arch: str, pretrained: str | None, towers: tuple[str, ...] = ("vision", "text")) -> Source:
    """`towers=("vision",)`: the image tower alone, checked on the vision side only (a model whose text
    tower fastclip does not reproduce still gives exact image vectors)."""
    open_clip = import_open_clip()
    arch = resolve_arch(arch)
    weights = _resolve_pretrained(arch, pretrained)
    problem = config_problem(arch, weights) if "text" in towers else vision_problem(arch, weights)
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    # A tag is fetched from the hub (cached after the first time); a file or `none` needs no network.
    offline = hub.go_offline_if_unreachable() if weights is not None and not Path(weights).is_file() else None
    import logging

    root = logging.getLogger()
    level = root.level
    if offline is not None:
        root.setLevel(logging.CRITICAL)  # open_clip logs the download failure that the error below reports
    hf_text = (open_clip.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_model_name")
    try:
        if "text" not in towers and weights is None and hf_text:
            model, preprocess = _image_tower_alone(arch)
        else:
            # pretrained_text=False: a Hugging Face text tower is built from its config alone (the CLIP checkpoint,
            # or random weights for 'none', fill it); True would download the text model's own weights.
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, pretrained_text=False)
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

    image = _check_preprocessing(arch, open_clip.get_model_preprocess_cfg(model))
    visual = model.visual
    logit_bias = getattr(model, "logit_bias", None)
    vision = dict(
        kind="open_clip",
        description={"kind": "open_clip", "model": arch,
                     "pretrained": "none" if weights is None else (Path(weights).name if Path(weights).is_file() else weights)},
        architecture=arch,
        logit_scale=float(model.logit_scale.detach().exp().reshape(-1)[0]),
        logit_bias=None if logit_bias is None else float(logit_bias.detach().reshape(-1)[0]),
        vision=vision_module(visual),
        **image,
        # open_clip gives sigmoid-trained models (SigLIP's loss) a learned logit_bias; CLIP's softmax has none.
        scoring="softmax" if logit_bias is None else "sigmoid",
        preprocess=preprocess,
        vision_heads=getattr(visual, "heads", 0) or 0,
        vision_width=getattr(getattr(visual, "transformer", None), "width", 0),
        reference_vision=functools.partial(model.encode_image, normalize=False),  # CoCa's normalizes by default
    )
    if "text" not in towers:
        with torch.no_grad():  # the text tower is not exported: free its weights before tracing
            for name, child in model.named_children():
                for t in child.parameters() if name != "visual" else ():
                    t.data = torch.empty(0, dtype=t.dtype)
        return Source(**vision, embed_dim=int((open_clip.get_model_config(arch) or {}).get("embed_dim")), **NO_TEXT)
    plan = text_tokenizer(arch)

    text, text_width, text_heads = _text_tower(arch, model)

    with torch.no_grad():
        embed_dim = int(text(plan.tokenize(["a"])).shape[-1])
    return Source(
        **vision,
        embed_dim=embed_dim,
        text=text,
        **plan.source_fields(),
        pooling=text.pool_type,
        dynamic_length=text.dynamic,
        text_heads=text_heads,
        text_width=text_width,
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


def _image_tower_alone(arch: str) -> tuple[nn.Module, object]:
    """(model, eval transform) of ARCH's image tower with random weights, its text tower never built:
    a Hugging Face text tower fetches its config from the hub just to be built. CLIP and CustomTextCLIP
    build the image tower first, so the seeded weights equal create_model's."""
    from dataclasses import asdict

    import numpy as np
    from open_clip.model import _build_vision_tower, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = import_open_clip().get_model_config(arch)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    model = _ImageModel(visual, cfg.get("init_logit_scale", np.log(1 / 0.07)), cfg.get("init_logit_bias"))
    pre = PreprocessCfg(size=visual.image_size)  # no tag: open_clip's defaults, as create_model gives them
    set_model_preprocess_cfg(model, asdict(pre))
    return model, image_transform_v2(pre, is_train=False)


def _is_hub_error(exc: Exception) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return False
    return isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError))
