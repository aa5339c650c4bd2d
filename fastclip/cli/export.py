"""`fastclip export`: a CLIP model to a verified ONNX model folder (needs the [export] extra)."""

from __future__ import annotations

import argparse
import sys

from ..defaults import PRECISIONS
from ..hints import install_hint
from .common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="convert a CLIP model to a verified ONNX model folder (needs the export extra: PyTorch and friends)",
        description="Export the vision and text towers of a CLIP model to ONNX, verify them against PyTorch "
        "on real photos and sentences, and write a model folder fastclip (and fastembed) can load.",
        epilog="Examples:\n  fastclip export openai/clip-vit-base-patch32 models/clip-b32\n"
        "  fastclip export open_clip:ViT-H-14 models/h14 --pretrained laion2b_s32b_b79k --precision fp32,fp16,int8\n"
        "  fastclip export open_clip:ViT-B-32 models/random-b32 --pretrained none   # random weights, for benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="Hugging Face id or local transformers folder, or open_clip:ARCH")
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="folder to create")
    p.add_argument("--list", action="store_true", help="list the open_clip architectures and whether each exports (and why not)")
    p.add_argument("--memory", action="store_true", help="with --list: each export's estimated peak memory vs this machine's")
    p.add_argument("--tags", action="store_true", help="with --list: every pretrained tag, its preprocessing and whether it exports")
    p.add_argument("--pretrained", metavar="TAG|FILE|none", help="open_clip weights: a tag, a checkpoint file, or none (random)")
    p.add_argument("--preprocess", metavar="TAG",
                   help="with --pretrained FILE or none: the open_clip pretrained tag whose preprocessing the weights follow "
                   "(needed when the architecture's tags preprocess differently; --list --tags shows them)")
    p.add_argument("--precision", default="fp32", metavar="LIST", help="comma-separated: fp32,fp16,int8 (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--external-data", action="store_true", help="store weights as ONNX external data even under 2 GB")
    p.add_argument("--vision-only", action="store_true",
                   help="export the image tower alone (for a model whose text tower is refused, or to save the space)")
    p.add_argument("--ignore-memory-estimate", action="store_true",
                   help="export even when the estimated peak memory exceeds what the machine has available")
    p.set_defaults(func=cmd_export)



def cmd_export(args) -> int:
    if args.list:
        if args.model or args.out_dir:
            raise UsageError("--list takes no MODEL or OUT_DIR")
        return _list(with_memory=args.memory, with_tags=args.tags)
    if not args.model or not args.out_dir:
        raise UsageError("export needs MODEL and OUT_DIR (or --list)")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise UsageError(f"--precision takes a comma-separated list of fp32, fp16, int8 (got {args.precision!r})")
    if _missing_export_extra():
        return 1
    from fastclip_export.api import export_model

    export_model(
        args.model,
        args.out_dir,
        pretrained=args.pretrained,
        precisions=precisions,
        overwrite=args.overwrite,
        external_data=True if args.external_data else None,
        check_memory=not args.ignore_memory_estimate,
        log=lambda message: print(message, file=sys.stderr),
        towers=("vision",) if args.vision_only else ("vision", "text"),
        preprocess=args.preprocess,
    )
    return 0


def _missing_export_extra() -> bool:
    try:
        import fastclip_export.api  # noqa: F401
    except ImportError as exc:
        print(
            f"fastclip: error: export needs PyTorch and friends ({exc.name or exc} is missing): "
            f"{install_hint('export')}",
            file=sys.stderr,
        )
        return True
    return False


def _list(with_memory: bool = False, with_tags: bool = False) -> int:
    if _missing_export_extra():
        return 1
    from fastclip_export import memory
    from fastclip_export.open_clip_catalog import TESTED_FAMILIES, architectures

    available = memory.available_bytes() if with_memory else None
    rows = architectures(memory_available=available)
    both = [r for r in rows if r["problem"] is None]
    vision = [r for r in rows if r["vision_problem"] is None]
    print(f"open_clip architectures: {len(both)} of {len(rows)} export both towers, {len(vision)} of {len(rows)} the image "
          "tower (--vision-only) (read from open_clip's model configs and pretrained tags; weights: --pretrained TAG, "
          "a checkpoint file, or none)")
    hub = [r for r in both if r["hub"]]
    cached = [r for r in hub if all(r["hub"].values())]
    print(f"text towers: {len(hub)} of the {len(both)} need a tokenizer (or text model config) from the Hugging Face hub, "
          f"fetched once and cached ({len(cached)} cached here); without it, --vision-only exports their image tower "
          "offline (STATUS names the hub repo)")
    if available:
        over = [r for r in rows if r.get("peak_bytes", 0) > available]
        print(f"memory: {len(over)} need more than the {available / memory.GB:.1f} GB available here "
              "(estimated peak, fp32; --ignore-memory-estimate to try anyway)")
    elif not with_memory:
        print("(--list --memory adds each export's estimated peak memory against this machine's; --list --tags each "
              "pretrained tag's preprocessing)")
    width = max(len(r["architecture"]) for r in rows)
    family_width = max(len(r["vision"]) for r in rows)
    print(f"{'ARCHITECTURE':<{width}}  {'SIZE':>4}  {'DIM':>4}  {'VISION TOWER':<{family_width}}  STATUS")
    for r in sorted(rows, key=lambda r: (r["problem"] is not None, r["vision_problem"] is not None, r["architecture"].lower())):
        status = _status(r, TESTED_FAMILIES, available)
        print(f"{r['architecture']:<{width}}  {r['image_size']!s:>4}  {r['embed_dim']!s:>4}  {r['vision']:<{family_width}}  {status}")
        for tag, pre in r["tags"].items() if with_tags else ():
            problem = r["vision_problem"] or r["refused_tags"].get(tag)
            print(f"{'':<{width}}  {'':>4}  {'':>4}  {'':<{family_width}}    tag {tag}: "
                  f"{'refused, ' + problem if problem else 'exports'} ({pre})")
        for tag, problem in r["refused_tags"].items() if not with_tags else ():
            print(f"{'':<{width}}  {'':>4}  {'':>4}  {'':<{family_width}}    tag {tag}: refused, {problem}")

    print("transformers: CLIPModel and SiglipModel checkpoints whose preprocessor_config.json is a shortest-edge "
          "resize + center crop or a plain square resize, bicubic or bilinear")
    return 0


def _status(row: dict, tested: frozenset, available: float | None) -> str:
    if row["vision_problem"]:
        return f"refused: {row['vision_problem']}"
    status = "yes" if row["problem"] is None else f"image tower only (text refused: {row['problem']})"
    if row["quick_gelu"] and row["problem"] is None:
        status += " (QuickGELU)"
    if row["vision"] not in tested:
        status += f"; untested family: {row['vision']} traced as is, verification decides"
    hub = row.get("hub") or {}
    if hub and row["problem"] is None:
        status += "; text needs hub " + ", ".join(f"{repo} ({'cached' if cached else 'not cached here'})"
                                                  for repo, cached in hub.items())
    tags = row.get("tags") or {}
    if tags:
        status += f"; tags: {len(tags) - len(row['refused_tags'])} of {len(tags)} export"
    peak = row.get("peak_bytes")
    if peak is not None:
        status += f"; ~{peak / 1e9:.1f} GB peak" + (f" > {available / 1e9:.1f} GB available here" if available and peak > available else "")
    return status
