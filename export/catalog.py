"""Build fastclip's catalog of named models (fastclip/layouts/catalog.json) and the table of docs/catalog.md.

    python -m fastclip_export.catalog            # rewrite both from the facts below and open_clip's configs
    python -m fastclip_export.catalog --check    # exit 1 when either differs from what it would write

Two kinds of input. Facts about published repos (which exist, their layout, file sizes, licenses) are kept
by hand below, each with where it was read. Numbers that open_clip knows (embedding dim, image size, text
context, preprocessing, sigmoid or softmax scoring) are derived from `open_clip.get_model_config` and the
pretrained tag's config, as Immich's exporter itself reads them. The runtime reads only the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOG_PATH = ROOT / "fastclip" / "layouts" / "catalog.json"
DOCS_PATH = ROOT / "docs" / "catalog.md"
TABLE_START, TABLE_END = "<!-- catalog-table:start -->", "<!-- catalog-table:end -->"

# ----------------------------------------------------------------------------------------- facts by hand

# Immich's CLIP-family exports: the `models` list of immich-app/immich
# machine-learning/export/immich_model_exporter/run.py. Its export.py names each hub repo immich-app/<the
# name's last path part>, with "xlm-roberta-base/large" written "XLM-Roberta-Base/Large".
IMMICH_OPEN_CLIP = (
    "RN101__openai", "RN101__yfcc15m", "RN50__cc12m", "RN50__openai", "RN50__yfcc15m", "RN50x16__openai",
    "RN50x4__openai", "RN50x64__openai", "ViT-B-16-SigLIP-256__webli", "ViT-B-16-SigLIP-384__webli",
    "ViT-B-16-SigLIP-512__webli", "ViT-B-16-SigLIP-i18n-256__webli", "ViT-B-16-SigLIP2__webli",
    "ViT-B-16-SigLIP__webli", "ViT-B-16-plus-240__laion400m_e31", "ViT-B-16-plus-240__laion400m_e32",
    "ViT-B-16__laion400m_e31", "ViT-B-16__laion400m_e32", "ViT-B-16__openai", "ViT-B-32-SigLIP2-256__webli",
    "ViT-B-32__laion2b-s34b-b79k", "ViT-B-32__laion2b_e16", "ViT-B-32__laion400m_e31", "ViT-B-32__laion400m_e32",
    "ViT-B-32__openai", "ViT-H-14-378-quickgelu__dfn5b", "ViT-H-14-quickgelu__dfn5b", "ViT-H-14__laion2b-s32b-b79k",
    "ViT-L-14-336__openai", "ViT-L-14-quickgelu__dfn2b", "ViT-L-14__laion2b-s32b-b82k", "ViT-L-14__laion400m_e31",
    "ViT-L-14__laion400m_e32", "ViT-L-14__openai", "ViT-L-16-SigLIP-256__webli", "ViT-L-16-SigLIP-384__webli",
    "ViT-L-16-SigLIP2-256__webli", "ViT-L-16-SigLIP2-384__webli", "ViT-L-16-SigLIP2-512__webli",
    "ViT-SO400M-14-SigLIP-384__webli", "ViT-SO400M-14-SigLIP2-378__webli", "ViT-SO400M-14-SigLIP2__webli",
    "ViT-SO400M-16-SigLIP2-256__webli", "ViT-SO400M-16-SigLIP2-384__webli", "ViT-SO400M-16-SigLIP2-512__webli",
    "ViT-gopt-16-SigLIP2-256__webli", "ViT-gopt-16-SigLIP2-384__webli", "nllb-clip-base-siglip__mrl",
    "nllb-clip-base-siglip__v1", "nllb-clip-large-siglip__mrl", "nllb-clip-large-siglip__v1",
    "xlm-roberta-base-ViT-B-32__laion5b_s13b_b90k", "xlm-roberta-large-ViT-H-14__frozen_laion5b_s13b_b90k",
)
# M-CLIP: a multilingual text tower taught to match this open_clip model's image tower, which Immich exports
# beside it (exporters/onnx/models/mclip.py, _MCLIP_TO_OPENCLIP); its text graph takes 77 tokens.
IMMICH_MCLIP = {
    "M-CLIP/LABSE-Vit-L-14": ("ViT-L-14", "openai"),
    "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus": ("ViT-B-16-plus-240", "laion400m_e32"),
    "M-CLIP/XLM-Roberta-Large-Vit-B-32": ("ViT-B-32", "openai"),
    "M-CLIP/XLM-Roberta-Large-Vit-L-14": ("ViT-L-14", "openai"),
}
MCLIP_CONTEXT = 77

# transformers.js repos (onnx/vision_model*.onnx, onnx/text_model*.onnx), each checked to exist on the hub,
# with the open_clip model of the same weights (dims, context, mean/std) and the image size the repo's name
# gives. google/siglip2-so400m-patch14-384 has no open_clip twin at 384: its towers are open_clip's -378 ones.
TRANSFORMERS_JS = (
    ("Xenova/clip-vit-base-patch32", "ViT-B-32", "openai", 224),
    ("Xenova/clip-vit-base-patch16", "ViT-B-16", "openai", 224),
    ("Xenova/clip-vit-large-patch14", "ViT-L-14", "openai", 224),
    ("Xenova/clip-vit-large-patch14-336", "ViT-L-14-336", "openai", 336),
    ("Xenova/siglip-base-patch16-224", "ViT-B-16-SigLIP", "webli", 224),
    ("Xenova/siglip-base-patch16-256", "ViT-B-16-SigLIP-256", "webli", 256),
    ("Xenova/siglip-base-patch16-384", "ViT-B-16-SigLIP-384", "webli", 384),
    ("Xenova/siglip-base-patch16-512", "ViT-B-16-SigLIP-512", "webli", 512),
    ("Xenova/siglip-large-patch16-256", "ViT-L-16-SigLIP-256", "webli", 256),
    ("onnx-community/siglip2-base-patch16-224-ONNX", "ViT-B-16-SigLIP2", "webli", 224),
    ("onnx-community/siglip2-base-patch16-256-ONNX", "ViT-B-16-SigLIP2-256", "webli", 256),
    ("onnx-community/siglip2-base-patch16-384-ONNX", "ViT-B-16-SigLIP2-384", "webli", 384),
    ("onnx-community/siglip2-large-patch16-384-ONNX", "ViT-L-16-SigLIP2-384", "webli", 384),
    ("onnx-community/siglip2-so400m-patch14-384-ONNX", "ViT-SO400M-14-SigLIP2-378", "webli", 384),
    ("onnx-community/siglip2-so400m-patch16-256-ONNX", "ViT-SO400M-16-SigLIP2-256", "webli", 256),
    ("onnx-community/siglip2-so400m-patch16-512-ONNX", "ViT-SO400M-16-SigLIP2-512", "webli", 512),
)
# transformers' processors resample as their preprocessor_config.json says: CLIP and SigLIP bicubic (3),
# the SigLIP 2 fixed-resolution configs bilinear (2), where open_clip's recipe for the same weights is bicubic.
PROCESSOR_INTERPOLATION = {"clip": "bicubic", "siglip": "bicubic", "siglip2": "bilinear"}

# fastembed 0.9.1's CLIP-style names (fastembed/image/onnx_embedding.py, image/siglip_embedding.py,
# text/clip_embedding.py, text/siglip_embedding.py): name per tower, repo, size_in_GB of each tower's file.
FASTEMBED_CLIP = {"vision": "Qdrant/clip-ViT-B-32-vision", "text": "Qdrant/clip-ViT-B-32-text"}
FASTEMBED_SIGLIP2 = "google/siglip2-base-patch16-224"  # both towers, from onnx-community/siglip2-base-patch16-224-ONNX

# Published file sizes in MB, read off each repo's file listing on the hub (int8: transformers.js's
# `_quantized` files); fastembed's size_in_GB for its files. A repo not listed here: null, not guessed.
SIZES_MB = {
    "Xenova/clip-vit-base-patch32": ((352, 176, 89.1), (254, 127, 64.5)),
    "Xenova/clip-vit-base-patch16": ((345, 173, 87.5), (254, 127, 64.5)),
    "Xenova/clip-vit-large-patch14": ((1220, 609, 307), (495, 248, 125)),
    "Xenova/siglip-base-patch16-224": ((372, 186, 99.5), (441, 221, 111)),
    "Xenova/siglip-base-patch16-256": ((372, 186, 99.5), (441, 221, 111)),
    "Xenova/siglip-base-patch16-384": ((373, 187, 99.8), (441, 221, 111)),
    "Xenova/siglip-base-patch16-512": ((374, 187, 100), (441, 221, 111)),
    "Xenova/siglip-large-patch16-256": ((1260, 633, 328), (1350, 673, 339)),
    "onnx-community/siglip2-base-patch16-224-ONNX": ((370, None, None), (1130, None, None)),
    "qdrant-clip-vit-b-32": ((340,), (250,)),
}
# Repos whose file listing shows the joint onnx/model.onnx, which holds logit_scale (and logit_bias).
JOINT_GRAPH_SEEN = {
    "Xenova/clip-vit-base-patch32", "Xenova/clip-vit-base-patch16", "Xenova/clip-vit-large-patch14",
    "Xenova/siglip-base-patch16-224", "Xenova/siglip-base-patch16-256", "Xenova/siglip-base-patch16-384",
    "Xenova/siglip-base-patch16-512", "Xenova/siglip-large-patch16-256", "onnx-community/siglip2-so400m-patch16-256-ONNX",
}

# License of the weights, as the upstream model card says; by open_clip tag where one card covers a tag.
LICENSE_BY_TAG = {"openai": "mit", "webli": "apache-2.0"}
LICENSE_BY_UPSTREAM = {
    "apple/DFN5B-CLIP-ViT-H-14-378": "apple-amlr",
    "apple/DFN5B-CLIP-ViT-H-14": "apple-sample-code-license",
    "visheratin/nllb-clip-base-siglip": "cc-by-nc-4.0",
    "visheratin/nllb-clip-large-siglip": "cc-by-nc-4.0",
    "visheratin/nllb-siglip-mrl-base": "mit",
}
# LAION's open_clip checkpoints (laion/CLIP-* cards and their timm copies) are MIT.
LAION_LICENSE = "mit"

# The layouts the repos ship in tests/test_layouts.py re-creates from the publisher's recipe and opens by name.
RECREATED = {
    "onnx-community/siglip2-base-patch16-224-ONNX": "test_transformers_js_siglip2_matches_transformers_and_fastembed",
    "Xenova/clip-vit-base-patch32": "test_transformers_js_clip_matches_transformers",
    "immich-app/ViT-B-32__openai": "test_immich_matches_open_clip",
    "immich-app/ViT-B-16-SigLIP2__webli": "test_immich_matches_open_clip",
}

# Short names, each an alias of one entry.
SHORT = {
    "qdrant-clip-vit-b-32": ["clip-vit-b-32"],
    "Xenova/clip-vit-base-patch16": ["clip-vit-b-16"],
    "Xenova/clip-vit-large-patch14": ["clip-vit-l-14"],
    "Xenova/clip-vit-large-patch14-336": ["clip-vit-l-14-336"],
    "Xenova/siglip-base-patch16-224": ["siglip-base"],
    "onnx-community/siglip2-base-patch16-224-ONNX": ["siglip2-base"],
    "onnx-community/siglip2-large-patch16-384-ONNX": ["siglip2-large"],
    "onnx-community/siglip2-so400m-patch14-384-ONNX": ["siglip2-so400m"],
    "immich-app/ViT-gopt-16-SigLIP2-384__webli": ["siglip2-gopt"],
    "immich-app/ViT-H-14-378-quickgelu__dfn5b": ["dfn5b-h-14-378"],
    "immich-app/ViT-H-14-quickgelu__dfn5b": ["dfn5b-h-14"],
    "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k": ["xlm-roberta-clip-b-32"],
    "immich-app/XLM-Roberta-Large-ViT-H-14__frozen_laion5b_s13b_b90k": ["xlm-roberta-clip-h-14"],
    "immich-app/nllb-clip-large-siglip__v1": ["nllb-siglip-large"],
    "immich-app/nllb-clip-base-siglip__v1": ["nllb-siglip-base"],
    "immich-app/XLM-Roberta-Large-Vit-B-32": ["m-clip-b-32"],
}

LAYOUTS = {
    "fastembed": {"description": "one repo per tower: model.onnx + preprocessor_config.json or tokenizer files",
                  "files": {"vision": "model.onnx", "text": "model.onnx"}, "skip": []},
    "transformers.js": {"description": "onnx/vision_model{,_fp16,_quantized}.onnx and onnx/text_model*.onnx, "
                                       "transformers configs at the root",
                        "files": {"vision": "onnx/vision_model.onnx", "text": "onnx/text_model.onnx"},
                        # Variants fastclip does not open (4-bit, other 8-bit encodings) and the joint graph's
                        # non-fp32 copies: each is as large as a tower again.
                        "skip": ["*_q4.onnx*", "*_q4f16.onnx*", "*_bnb4.onnx*", "*_int8.onnx*", "*_uint8.onnx*",
                                 "onnx/model_*.onnx*"]},
    "immich": {"description": "visual/model.onnx + preprocess_cfg.json, textual/model.onnx + tokenizer files, "
                              "config.json = the open_clip model config",
               "files": {"vision": "visual/model.onnx", "text": "textual/model.onnx"},
               # Immich's ONNX route skips its ARM NN and Rockchip NPU builds too (immich_ml/models/base.py).
               "skip": ["*.armnn", "*.rknn"]},
}
FAMILIES = ("clip", "siglip", "siglip2", "xlm-roberta-clip", "nllb-siglip", "m-clip")
MULTILINGUAL_FAMILIES = ("siglip2", "xlm-roberta-clip", "nllb-siglip", "m-clip")

# ------------------------------------------------------------------------------------------- derivation


def family(arch: str) -> str:
    if "SigLIP2" in arch:
        return "siglip2"
    if arch.startswith("nllb-clip"):
        return "nllb-siglip"
    if "SigLIP" in arch:
        return "siglip"
    return "xlm-roberta-clip" if "xlm-roberta" in arch.lower() else "clip"


def _tag(arch: str, tag: str) -> str:
    """open_clip's spelling of an Immich tag (Immich writes laion2b-s34b-b79k for laion2b_s34b_b79k)."""
    from .torchvision_compat import import_open_clip

    tags = import_open_clip().list_pretrained_tags_by_model(arch)
    for candidate in (tag, tag.replace("-", "_")):
        if candidate in tags:
            return candidate
    raise SystemExit(f"open_clip has no pretrained tag {tag!r} for {arch} (tags: {', '.join(tags)})")


def _license(arch: str, tag: str) -> str | None:
    from open_clip.pretrained import get_pretrained_cfg

    upstream = (get_pretrained_cfg(arch, tag).get("hf_hub") or "").rstrip("/")
    if upstream in LICENSE_BY_UPSTREAM:
        return LICENSE_BY_UPSTREAM[upstream]
    if tag in LICENSE_BY_TAG:
        return LICENSE_BY_TAG[tag]
    return LAION_LICENSE if tag.startswith(("laion", "frozen_laion")) else None


def _derived(arch: str, tag: str) -> dict[str, Any]:
    """What open_clip's configs say about ARCH with pretrained TAG."""
    from .open_clip_config import image_settings, preprocess_cfg
    from .torchvision_compat import import_open_clip

    cfg = import_open_clip().get_model_config(arch)
    pre = image_settings(preprocess_cfg(arch, tag))  # what an export of the tag records
    return {
        "architecture": arch, "pretrained": tag, "embed_dim": cfg["embed_dim"],
        "image_size": cfg["vision_cfg"].get("image_size", 224),
        # open_clip's CLIPTextCfg default where the config names none (HF text towers): Immich pads to it too
        "context_length": cfg["text_cfg"].get("context_length", 77),
        "preprocessing": {"resize": pre["resize_mode"], "interpolation": pre["interpolation"],
                          "mean": list(pre["mean"]), "std": list(pre["std"])},
        "scoring": "sigmoid" if "init_logit_bias" in cfg else "softmax",
        "license": _license(arch, tag),
    }


def _sizes(key: str, precisions: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    known = SIZES_MB.get(key, ((None,) * len(precisions),) * 2)
    return {tower: dict(zip(precisions, values)) for tower, values in zip(("vision", "text"), known)}


def _entry(name: str, layout: str, towers: dict[str, str], d: dict[str, Any], *, description: str,
           source: str, scale_ships: bool | None, verified: str, precisions: tuple[str, ...],
           fam: str | None = None, aliases: tuple[str, ...] = (),
           fastembed: dict[str, str] | None = None) -> dict[str, Any]:
    fam = fam or family(d["architecture"])
    pre = dict(d["preprocessing"], source=source)
    return {
        "name": name, "aliases": [*SHORT.get(name, []), *aliases], "layout": layout, "towers": towers,
        "family": fam, "description": description, "architecture": d["architecture"], "pretrained": d["pretrained"],
        "embed_dim": d["embed_dim"], "image_size": d["image_size"], "context_length": d["context_length"],
        "preprocessing": pre, "scoring": {"kind": d["scoring"], "scale_ships": scale_ships},
        "license": d["license"], "size_mb": _sizes(name, precisions),
        "multilingual": fam in MULTILINGUAL_FAMILIES or "i18n" in d["architecture"], "verified": verified,
        # the name per tower fastembed lists this model under (its ImageEmbedding / TextEmbedding), if any
        "fastembed": fastembed,
    }


def _verified(repo: str, otherwise: str) -> str:
    if repo in RECREATED:
        return f"re-created from the publisher's recipe, tests/test_layouts.py::{RECREATED[repo]}"
    return otherwise


def immich_entries() -> list[dict[str, Any]]:
    out = []
    for model in IMMICH_OPEN_CLIP:
        arch, _, tag = model.partition("__")
        repo = "immich-app/" + model.replace("xlm-roberta-large", "XLM-Roberta-Large").replace(
            "xlm-roberta-base", "XLM-Roberta-Base")
        d = _derived(arch, _tag(arch, tag))
        out.append(_entry(repo, "immich", {"vision": repo, "text": repo}, d,
                          description=f"open_clip {arch}, {d['pretrained']} weights, Immich's ONNX export",
                          source="visual/preprocess_cfg.json (open_clip.get_model_preprocess_cfg)", scale_ships=False,
                          verified=_verified(repo, "layout as immich's exporter writes it, derived from open_clip config"),
                          precisions=("fp32",), aliases=(repo.split("/")[1],)))
    for model, (arch, tag) in IMMICH_MCLIP.items():
        repo = "immich-app/" + model.split("/")[1]
        d = dict(_derived(arch, tag), context_length=MCLIP_CONTEXT, license=None)
        out.append(_entry(repo, "immich", {"vision": repo, "text": repo}, d, fam="m-clip",
                          description=f"{model} text tower with open_clip {arch} ({tag}) images, Immich's ONNX export",
                          source="visual/preprocess_cfg.json (open_clip.get_model_preprocess_cfg)", scale_ships=False,
                          verified=f"image tower as immich's exporter writes it, derived from open_clip config "
                                   f"({arch}, {tag}); the M-CLIP text graph (input_ids + attention_mask, "
                                   f"{MCLIP_CONTEXT} tokens) is not re-created here",
                          precisions=("fp32",), aliases=(repo.split("/")[1],)))
    return out


def _upstream(repo: str) -> str:
    """The transformers checkpoint a transformers.js repo converts (each repo's README names it)."""
    name = repo.split("/")[1].removesuffix("-ONNX")
    return ("openai/" if name.startswith("clip-") else "google/") + name


def transformers_js_entries() -> list[dict[str, Any]]:
    out = []
    for repo, arch, tag, size in TRANSFORMERS_JS:
        d = _derived(arch, tag)
        fam = family(arch)
        d["image_size"] = size
        d["preprocessing"]["interpolation"] = PROCESSOR_INTERPOLATION[fam]
        processor = "CLIPImageProcessor" if fam == "clip" else "SiglipImageProcessor"
        aliases = (FASTEMBED_SIGLIP2,) if repo == "onnx-community/siglip2-base-patch16-224-ONNX" else ()
        out.append(_entry(
            repo, "transformers.js", {"vision": repo, "text": repo}, d,
            description=f"{_upstream(repo)} as transformers.js ONNX files"
                        + (" (fastembed's google/siglip2-base-patch16-224)" if aliases else ""),
            source=f"preprocessor_config.json ({processor})", scale_ships=True if repo in JOINT_GRAPH_SEEN else None,
            verified=_verified(repo, f"layout as transformers.js publishes it (optimum's names), numbers derived from "
                                     f"open_clip config of the same weights ({arch}, {tag}); not re-created here"),
            precisions=("fp32", "fp16", "int8"), aliases=aliases,
            fastembed={"vision": FASTEMBED_SIGLIP2, "text": FASTEMBED_SIGLIP2} if aliases else None))
    return out


def fastembed_entries() -> list[dict[str, Any]]:
    d = _derived("ViT-B-32", "openai")
    return [_entry("qdrant-clip-vit-b-32", "fastembed", dict(FASTEMBED_CLIP), d,
                   description="CLIP ViT-B/32, OpenAI weights, fastembed's ONNX towers (fastclip's default)",
                   source="preprocessor_config.json (CLIPImageProcessor)", scale_ships=False,
                   verified="fastembed layout re-created from a tiny export: "
                            "tests/test_model.py::test_default_models_come_from_the_hub_cache_offline",
                   precisions=("fp32",), aliases=tuple(FASTEMBED_CLIP.values()), fastembed=dict(FASTEMBED_CLIP))]


def build() -> dict[str, Any]:
    """The catalog as the runtime reads it."""
    from .torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    models = fastembed_entries() + transformers_js_entries() + immich_entries()
    return {"format": "fastclip-catalog", "format_version": 1,
            "generated_by": "python -m fastclip_export.catalog", "open_clip_version": open_clip.__version__,
            "layouts": LAYOUTS, "families": list(FAMILIES), "models": models}


def dumps(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ docs


def _mb(sizes: dict[str, float | None]) -> str:
    return " / ".join("?" if v is None else f"{v:g}" for v in sizes.values())


def markdown_table(catalog: dict[str, Any]) -> str:
    """The full table of docs/catalog.md, one row per entry, from the catalog JSON alone."""
    head = ("| name | also | layout | family | dim | image | context | preprocessing | scoring | license | "
            "precisions | vision MB | text MB | multilingual |")
    rows = [head, "|" + "---|" * 14]
    scale = {True: "scale ships", False: "no scale shipped", None: "scale unchecked"}
    for m in catalog["models"]:
        pre, sizes = m["preprocessing"], m["size_mb"]
        rows.append(" | ".join([
            f"| `{m['name']}`", ", ".join(f"`{a}`" for a in m["aliases"]) or "-", m["layout"], m["family"],
            str(m["embed_dim"]), str(m["image_size"]), str(m["context_length"]), f"{pre['resize']}, {pre['interpolation']}",
            f"{m['scoring']['kind']}, {scale[m['scoring']['scale_ships']]}", m["license"] or "?",
            " / ".join(sizes["vision"]), _mb(sizes["vision"]), _mb(sizes["text"]),
            "yes" if m["multilingual"] else "no"]) + " |")
    return "\n".join(rows) + "\n"


def docs_with_table(page: str, table: str) -> str:
    start, end = page.index(TABLE_START) + len(TABLE_START), page.index(TABLE_END)
    return page[:start] + "\n" + table + page[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastclip_export.catalog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the JSON or the docs table would change")
    args = parser.parse_args(argv)
    catalog = build()
    text = dumps(catalog)
    page = docs_with_table(DOCS_PATH.read_text(encoding="utf-8"), markdown_table(catalog))
    stale = [p for p, new in ((CATALOG_PATH, text), (DOCS_PATH, page))
             if not p.is_file() or p.read_text(encoding="utf-8") != new]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run python -m fastclip_export.catalog", file=sys.stderr)
        return 1 if stale else 0
    CATALOG_PATH.write_text(text, encoding="utf-8")
    DOCS_PATH.write_text(page, encoding="utf-8")
    print(f"{len(catalog['models'])} models -> {CATALOG_PATH.relative_to(ROOT)}, table -> {DOCS_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
