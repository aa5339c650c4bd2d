"""What `fastclip export --list` shows: every architecture open_clip lists, its vision family, whether
(and why not) it exports, each pretrained tag's preprocessing, and which text towers need the hub.

Everything is read from open_clip's configs and pretrained registry (open_clip_config), not from a table
of ours, but for the vision families below: a timm trunk's name says which family it is.
"""

from __future__ import annotations

from .open_clip_config import config_problem, hub_repos, summary, tag_preprocessing, vision_problem
from .torchvision_compat import import_open_clip

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


def hub_cached(repo: str) -> bool:
    """Whether this machine's hub cache holds `repo` (its config or tokenizer config: what transformers
    reads first), so that the text tower exports offline. A look at the cache folder, no network."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in ("tokenizer_config.json", "config.json"))


def architectures(memory_available: float | None = None) -> list[dict]:
    """Every architecture open_clip lists, with whether (and why not) it exports - both towers
    ("problem"), the image tower alone ("vision_problem") - its tags' preprocessing ("tags") and those
    refused for it ("refused_tags"), and the hub repos its text tower needs ("hub": {repo: cached here}).
    With `memory_available` (bytes), each row also gets "peak_bytes", the estimated peak memory of the
    export that goes ahead (counted on the meta device: ~0.1 s a model)."""
    from . import memory

    open_clip = import_open_clip()
    rows = []
    for arch in open_clip.list_models():
        problem = config_problem(arch)
        vision = problem and vision_problem(arch)
        tags = tag_preprocessing(arch)
        refused_tags = {}
        if vision is None:
            for tag in tags:
                tag_problem = vision_problem(arch, tag)
                if tag_problem:
                    refused_tags[tag] = tag_problem
        cfg = open_clip.get_model_config(arch) or {}
        row = {"architecture": arch, "problem": problem, "vision_problem": vision, "refused_tags": refused_tags,
               "tags": {tag: summary(image) for tag, image in tags.items()},
               "hub": {repo: hub_cached(repo) for repo in hub_repos(arch)},
               "vision": vision_family(arch), "image_size": cfg.get("vision_cfg", {}).get("image_size", 224),
               "embed_dim": cfg.get("embed_dim"), "quick_gelu": bool(cfg.get("quick_gelu"))}
        if memory_available is not None and vision is None:
            from .open_clip_source import count_parameters

            params = count_parameters(arch, ("vision", "text") if problem is None else ("vision",))
            row["peak_bytes"] = memory.estimate(*params, ["fp32"]).peak_bytes
        rows.append(row)
    return rows
