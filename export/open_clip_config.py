"""`open_clip:ARCH` read from open_clip's configs alone (no weights, no model): the architecture, the
weights, the preprocessing the export records, and whether it can export exactly.

ARCH is a registered open_clip architecture (`open_clip.list_models()`, including configs added with
`open_clip.add_model_config`) or a path to a model-config JSON file, which is registered under its file
stem - the way to export a custom architecture from the command line.

A tag's weights come with the tag's preprocessing (open_clip's pretrained registry). Random weights
(`none`) and a checkpoint file come with none: `--preprocess TAG` names the tag they follow, and when
it is not given and every tag of the architecture preprocesses alike, that preprocessing is taken.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from fastclip import manifest
from fastclip.errors import ExportError

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


def resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    """The tag or checkpoint file `pretrained` names for ARCH, or None for random weights."""
    tags = import_open_clip().list_pretrained_tags_by_model(arch)
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


def is_tag(weights: str | None) -> bool:
    return weights is not None and not Path(weights).is_file()


def preprocess_cfg(arch: str, tag: str | None = None) -> dict:
    """open_clip's eval preprocessing of ARCH with pretrained `tag`, merged as create_model merges it:
    PreprocessCfg's defaults, the model config's preprocess_cfg, the tag's entries, the tower's size."""
    open_clip = import_open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = open_clip.get_model_config(arch) or {}
    pre = merge_preprocess_dict(PreprocessCfg(), cfg.get("preprocess_cfg", {}))
    if is_tag(tag):
        from open_clip.pretrained import get_pretrained_cfg

        pre = merge_preprocess_dict(pre, get_pretrained_cfg(arch, tag))
    if "image_size" in cfg.get("vision_cfg", {}):
        pre["size"] = cfg["vision_cfg"]["image_size"]
    return pre


def image_settings(pre: dict) -> dict:
    """The export's image settings (the `Source` fields, the manifest's vision entry) from an open_clip
    preprocess cfg: what `--list --tags` shows and what the export records come from here alone."""
    size = pre.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    # open_clip's image_transform broadcasts a single mean/std value to the three channels.
    mean, std = (v if isinstance(v, (list, tuple)) else (v,) * 3 for v in (pre["mean"], pre["std"]))
    return dict(image_size=int(size), mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                resize_mode=pre.get("resize_mode", "shortest"), interpolation=pre.get("interpolation", "bicubic"),
                fill=int(pre.get("fill_color", 0)))


def summary(image: dict) -> str:
    """One line for `image_settings(...)`: resize mode, filter, mean, std (4 decimals)."""
    mean, std = (tuple(round(v, 4) for v in image[k]) for k in ("mean", "std"))
    return f"{image['resize_mode']}, {image['interpolation']}, mean {mean}, std {std}"


def tag_preprocessing(arch: str) -> dict[str, dict]:
    """{tag: image_settings} for every pretrained tag of ARCH."""
    return {tag: image_settings(preprocess_cfg(arch, tag)) for tag in import_open_clip().list_pretrained_tags_by_model(arch)}


def preprocess_tag(arch: str, weights: str | None, preprocess: str | None) -> str | None:
    """The pretrained tag whose preprocessing the export of ARCH with `weights` records, or None for
    the model config's own. A tag's weights bring their tag's; random weights and a checkpoint file
    follow `preprocess`, else the preprocessing every tag agrees on; tags that disagree are refused."""
    tags = tag_preprocessing(arch)
    if is_tag(weights):
        if preprocess not in (None, weights):
            raise ExportError(f"open_clip:{arch}: --preprocess {preprocess} with --pretrained {weights}: a tag's weights "
                              f"come with the tag's own preprocessing; --preprocess is for 'none' or a checkpoint file")
        return weights
    if preprocess is not None:
        if preprocess not in tags:
            listed = f" (its tags: {', '.join(tags)})" if tags else " (it has no pretrained tags)"
            raise ExportError(f"--preprocess {preprocess!r} is not a pretrained tag of open_clip:{arch}"
                              f"{_close(preprocess, list(tags))}{listed}")
        return preprocess
    kinds: dict[str, list[str]] = {}
    for tag, image in tags.items():
        kinds.setdefault(summary(image) + f", size {image['image_size']}, fill {image['fill']}", []).append(tag)
    if len(kinds) > 1:
        what = "random weights" if weights is None else f"the checkpoint {Path(weights).name}"
        listing = "; ".join(f"{', '.join(names)}: {kind}" for kind, names in kinds.items())
        raise ExportError(f"open_clip:{arch}: its pretrained tags preprocess differently, so which one {what} follow "
                          f"must be said: --preprocess TAG (preprocess=TAG). {listing}")
    return next(iter(tags), None)



def config_problem(arch: str, tag: str | None = None) -> str | None:
    """Why open_clip:ARCH (preprocessing as pretrained `tag` sets it) cannot be exported exactly, read
    from open_clip's model config and the tag's preprocessing alone - no weights, no model - or None
    when the export goes ahead. The loader checks the built model again; this is what `--list` shows."""
    cfg = import_open_clip().get_model_config(arch) or {}
    return text_problem(cfg.get("text_cfg", {})) or vision_problem(arch, tag)


def vision_problem(arch: str, tag: str | None = None) -> str | None:
    """Why the image tower of open_clip:ARCH (with pretrained `tag`) cannot be exported exactly, or None."""
    vision = (import_open_clip().get_model_config(arch) or {}).get("vision_cfg", {})
    size = vision.get("image_size", 224)
    if isinstance(size, (tuple, list)) and len(set(size)) != 1:
        return f"non-square input {tuple(size)} is not supported"
    return preprocess_problem(preprocess_cfg(arch, tag), tag)


def preprocess_problem(pre: dict, tag: str | None) -> str | None:
    where = f"pretrained {tag!r} preprocesses" if is_tag(tag) else "preprocesses"
    if pre.get("resize_mode", "shortest") not in manifest.RESIZE_MODES:
        return f"{where} with resize_mode={pre['resize_mode']!r}; fastclip reproduces {', '.join(manifest.RESIZE_MODES)}"
    if pre.get("interpolation", "bicubic") not in manifest.INTERPOLATIONS:
        return (f"{where} with interpolation={pre['interpolation']!r}; fastclip reproduces "
                f"{', '.join(manifest.INTERPOLATIONS)}")
    fill = pre.get("fill_color", 0)
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        return f"{where} with fill_color={fill!r}; fastclip pads with one value 0-255 in every band"
    return None


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


def text_cfg(arch: str) -> dict:
    return (import_open_clip().get_model_config(arch) or {}).get("text_cfg", {})


def hub_repos(arch: str) -> tuple[str, ...]:
    """The Hugging Face hub repos ARCH's text tower needs (its tokenizer, an HF text model's config):
    cached once, or the export of both towers needs the hub; the image tower alone needs neither."""
    text = text_cfg(arch)
    return tuple(dict.fromkeys(r for r in (text.get("hf_tokenizer_name"), text.get("hf_model_name")) if r))


@dataclass(frozen=True)
class Plan:
    """One export of open_clip:ARCH, resolved and checked once: what the memory estimate counts and the
    loader builds."""

    arch: str
    weights: str | None  # a tag, a checkpoint file, or None for random weights
    towers: tuple[str, ...]
    preprocess: str | None  # the tag whose preprocessing is recorded; None: the model config's own
    pre: dict  # open_clip's preprocess cfg for it (what the reference transform is built from)

    @property
    def image(self) -> dict:
        return image_settings(self.pre)


def resolve(arch: str, pretrained: str | None, towers: tuple[str, ...] = ("vision", "text"),
            preprocess: str | None = None) -> Plan:
    """ARCH, its weights and its preprocessing resolved, and refused (ExportError) when the export could
    not be exact: `towers=("vision",)` checks the image side only (a model whose text tower fastclip does
    not reproduce still gives exact image vectors)."""
    arch = resolve_arch(arch)
    weights = resolve_pretrained(arch, pretrained)
    tag = preprocess_tag(arch, weights, preprocess)
    problem = config_problem(arch, tag) if "text" in towers else vision_problem(arch, tag)
    if problem:
        raise ExportError(f"open_clip:{arch}: {problem}")
    return Plan(arch, weights, tuple(towers), tag, preprocess_cfg(arch, tag))
