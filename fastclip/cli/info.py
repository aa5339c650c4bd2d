"""`fastclip info`: dims, precisions and verification figures of a model folder or hub repo."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show dims, precisions and verification figures of a model", description="Describe a model folder or hub repo.")
    p.add_argument("model", metavar="MODEL", help="model folder, catalog name (`fastclip models`) or hub repo id")
    p.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only models already cached")
    p.set_defaults(func=cmd_info)


def describe(manifest, folder: Path) -> Iterable[str]:
    yield f"model folder: {folder}"
    src = manifest.source
    yield f"source: {src.get('kind', '?')} {src.get('model', '')} {('pretrained=' + str(src['pretrained'])) if src.get('pretrained') else ''}".rstrip()
    scale = "not shipped" if manifest.logit_scale is None else f"{manifest.logit_scale:g}"
    yield f"architecture: {manifest.architecture}   embed_dim: {manifest.embed_dim}   logit_scale: {scale}" + (
        f"   logit_bias: {manifest.logit_bias:g}" if manifest.logit_bias is not None else ""
    ) + f"   scoring: {manifest.scoring}"
    for name, spec in (("vision", manifest.vision), ("text", manifest.text)):
        if spec is None:
            continue
        if name == "vision":
            resize = {"shortest": "shortest side + center crop", "squash": "squashed to the square",
                      "longest": f"longest side + padding with {spec.fill}"}.get(spec.resize_mode, spec.resize_mode)
            detail = f"{spec.image_size}px, {spec.interpolation} resize of the {resize}"
        else:
            detail = (f"context {spec.context_length}{' (dynamic length)' if spec.dynamic_length else ', padded to it'}, "
                      f"cleaning {spec.cleaning}, pooling {spec.pooling}"
                      + (f", padding {spec.padding_side}" if spec.padding_side != "right" else "")
                      + (f", language {spec.language} ({len(spec.languages)} codes: language=)" if spec.languages else ""))
        yield f"{name} tower: {detail}"
        for precision, f in spec.files.items():
            names = f.path + "".join(f" + {Path(d).name}" for d in f.external_data)
            line = f"  {precision}: {names}, {_size(folder, f)}"
            v = spec.verification.get(precision)
            if v:
                line += (
                    f"; verified on {v.samples} inputs: min cosine {v.min_cosine:.7f} (threshold {v.threshold_cosine}),"
                    f" max abs diff {v.max_abs_diff:.2e} ({v.max_abs_diff_rel:.2e} of the norm)"
                )
            else:
                line += "; not verified by fastclip"
            yield line
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    yield f"folder size on disk: {total / 1e6:,.1f} MB"


def _size(folder: Path, f) -> str:
    """Size on disk of a variant: the graph plus its external data, which carries the weights."""
    paths = [folder / f.path, *(folder / d for d in f.external_data)]
    try:
        return f"{sum(p.stat().st_size for p in paths) / 1e6:,.1f} MB on disk"
    except OSError:
        return "missing on disk" if f.bytes is None else f"{f.bytes / 1e6:,.1f} MB (graph file, per manifest; missing on disk)"


def cmd_info(args) -> int:
    from ..model import load_manifest, resolve_folder, split_towers

    # a catalog model published as one repo per tower (fastembed's CLIP): each repo in turn
    for i, tower in enumerate(("vision", "text") if split_towers(args.model) else (None,)):
        folder = resolve_folder(args.model, cache_dir=args.cache_dir, local_files_only=args.offline, tower=tower)
        if i:
            print()
        for line in describe(load_manifest(folder), folder):
            print(line)
    return 0
