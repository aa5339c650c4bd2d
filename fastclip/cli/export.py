"""`fastclip export`: a CLIP model to a verified ONNX model folder (needs the [export] extra)."""

from __future__ import annotations

import argparse
import sys

from .common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="convert a CLIP model to a verified ONNX model folder (needs: pip install 'fastclip[export]')",
        description="Export the vision and text towers of a CLIP model to ONNX, verify them against PyTorch "
        "on real photos and sentences, and write a model folder fastclip (and fastembed) can load.",
        epilog="Examples:\n  fastclip export openai/clip-vit-base-patch32 models/clip-b32\n"
        "  fastclip export open_clip:ViT-H-14 models/h14 --pretrained laion2b_s32b_b79k --precision fp32,fp16,int8\n"
        "  fastclip export open_clip:ViT-B-32 models/random-b32 --pretrained none   # random weights, for benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="Hugging Face id or local transformers folder, or open_clip:ARCH")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to create")
    p.add_argument("--pretrained", metavar="TAG|FILE|none", help="open_clip weights: a tag, a checkpoint file, or none (random)")
    p.add_argument("--precision", default="fp32", metavar="LIST", help="comma-separated: fp32,fp16,int8 (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--external-data", action="store_true", help="store weights as ONNX external data even under 2 GB")
    p.set_defaults(func=cmd_export)



def cmd_export(args) -> int:
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    if bad or not precisions:
        raise UsageError(f"--precision takes a comma-separated list of fp32, fp16, int8 (got {args.precision!r})")
    try:
        from fastclip_export.api import export_model
    except ImportError as exc:
        print(
            f"fastclip: error: export needs PyTorch and friends ({exc.name or exc} is missing): "
            "pip install 'fastclip[export]'",
            file=sys.stderr,
        )
        return 1
    export_model(
        args.model,
        args.out_dir,
        pretrained=args.pretrained,
        precisions=precisions,
        overwrite=args.overwrite,
        external_data=True if args.external_data else None,
        log=lambda message: print(message, file=sys.stderr),
    )
    return 0
