"""`fastclip eval retrieval`: Recall@K, mAP, P@K and nDCG@K in both directions on your own image-caption data,
per configuration."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..defaults import IMAGE_BATCH, PRECISIONS
from .common import UsageError, note, progress

FAST = {"off": False, "on": True, "max": "max"}


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: retrieval Recall@K, mAP, P@K, nDCG@K in both directions on "
                       "your captions", description="Evaluate a model on your own data.")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    r = tasks.add_parser(
        "retrieval",
        help="Recall@K, mAP, P@K, nDCG@K text -> image and image -> text on an image-caption dataset",
        description="Embed every image and caption of DATASET and report retrieval quality in both directions "
        "(LAION clip_benchmark's protocol and key names): text -> image (each caption has one correct image) "
        "and image -> text (an image is a hit when any of its captions is in its top K); then mAP, Precision@K and "
        "nDCG@K over the full ranking (image -> text: all captions of an image are relevant).",
        epilog="DATASET: .csv/.tsv/.jsonl/.parquet with columns image, caption (one row per caption; image paths "
        "relative to the file unless --images), or a Karpathy split file (dataset_coco.json, "
        "dataset_flickr30k.json) read with --split.\n\n"
        "Examples:\n  fastclip eval retrieval captions.csv --model models/clip-b32\n"
        "  fastclip eval retrieval dataset_coco.json --images coco/ --model models/clip-b32 "
        "--precision fp32,int8 --fast off,max --report coco.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("dataset", metavar="DATASET", help="image-caption file (see below)")
    r.add_argument("--model", metavar="MODEL", help="model folder, catalog name (`fastclip models`) or hub repo holding both towers")
    r.add_argument("--images", metavar="ROOT", help="folder the image paths are relative to (default: the dataset's folder)")
    r.add_argument("--split", default="test", help="Karpathy JSON: which split (default test)")
    r.add_argument("--precision", metavar="LIST", help="comma-separated model variants to compare, e.g. fp32,int8")
    r.add_argument("--fast", default="off", metavar="LIST", help="comma-separated JPEG decoding modes to compare: off, on, max (default off)")
    r.add_argument("--ks", default="1,5,10", metavar="LIST", help="the K of Recall@K, P@K, nDCG@K (default 1,5,10)")
    r.add_argument("--report", metavar="FILE.json", help="also write the numbers (clip_benchmark's key names) to this file")
    r.add_argument("--skip-errors", action="store_true", help="leave unreadable images (and their captions) out "
                   "instead of stopping; the numbers are still printed, and the exit status is 1")
    r.add_argument("--batch-size", type=int, default=IMAGE_BATCH, metavar="N", help=f"images per model call (default {IMAGE_BATCH})")
    r.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation (bit-parity with reference pipelines)")
    r.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    r.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    r.add_argument("--offline", action="store_true", help="use only models already cached")
    r.set_defaults(func=cmd_eval_retrieval)


def _list(value: str | None, allowed, option: str) -> list:
    if value is None:
        return [None]
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items or len(set(items)) != len(items):
        raise UsageError(f"{option} takes a comma-separated list of distinct {', '.join(allowed)} (got {value!r})")
    return items


def cmd_eval_retrieval(args) -> int:
    import numpy as np

    from ..embedding import ImageEmbedding, TextEmbedding
    from ..errors import ImageError
    from ..retrieval import retrieval_metrics
    from ..retrieval.datasets import load_captions

    precisions = _list(args.precision, PRECISIONS, "--precision")
    fasts = _list(args.fast, tuple(FAST), "--fast")
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
        if any(k < 1 for k in ks):
            raise ValueError
    except ValueError:
        raise UsageError(f"--ks takes comma-separated positive integers (got {args.ks!r})") from None
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    data = load_captions(args.dataset, images_root=args.images, split=args.split)

    def log(message: str) -> None:
        note(f"fastclip: {message}")

    log(f"{data.source}: {len(data.images)} images, {len(data.captions)} captions")
    common: dict[str, Any] = {"cache_dir": args.cache_dir, "local_files_only": args.offline, "threads": args.threads}

    # Text vectors do not depend on the JPEG decoding mode: one text pass per precision.
    texts: dict[Any, np.ndarray] = {}
    images: dict[tuple, np.ndarray] = {}
    failed: dict[int, str] = {}  # image index -> reason (any configuration)
    model_name = None
    actual: dict[Any, str] = {}  # requested precision -> the variant the model picked
    for precision in precisions:
        text_model = TextEmbedding(args.model, precision=precision, **common)
        model_name = text_model.model_name
        actual[precision] = text_model.precision
        log(f"embedding {len(data.captions)} captions ({actual[precision]})")
        bar = progress(len(data.captions), "caption")
        rows = []
        for vector in text_model.embed(data.captions):
            rows.append(vector)
            bar.update(1)
        bar.close()
        texts[precision] = np.stack(rows)
        text_model.close()  # one model's sessions and threads at a time
        for fast in fasts:
            image_model = ImageEmbedding(args.model, precision=precision, fast=FAST[fast or "off"],
                                         exif_transpose=not args.no_exif, **common)
            label = _label(actual[precision], fast)
            log(f"embedding {len(data.images)} images ({label})")
            bar = progress(len(data.images), "img")

            def report(error: ImageError, bar=bar) -> None:
                if error.index not in failed:
                    failed[error.index] = error.reason
                    bar.write(f"fastclip: unreadable image {error.source}: {error.reason}", file=sys.stderr)

            vectors = np.zeros((len(data.images), image_model.dim), np.float32)
            stream = image_model.embed(data.images, args.batch_size, errors="skip" if args.skip_errors else "raise",
                                       on_error=report)
            try:
                for i, vector in enumerate(stream):
                    if vector is not None:
                        vectors[i] = vector
                    bar.update(1)
            except ImageError as exc:
                raise ImageError(exc.index, exc.source, exc.reason + " (--skip-errors leaves unreadable images "
                                 "and their captions out)") from None
            finally:
                bar.close()
                image_model.close()
            images[(precision, fast)] = vectors

    # An unreadable image leaves with its captions, in every configuration, so that all of them are
    # measured on the same pairs.
    kept = data.without_images(set(failed))
    if not kept.images:
        raise ImageError(0, data.images[0], "no image of the dataset could be read")
    keep = np.array([i for i in range(len(data.images)) if i not in failed], np.int64)
    excluded_captions = len(data.captions) - len(kept.captions)
    text_keep = np.flatnonzero(~np.isin(data.text_image_index, list(failed)))
    results = []
    for precision in precisions:
        for fast in fasts:
            metrics = retrieval_metrics(images[(precision, fast)][keep], texts[precision][text_keep],
                                        kept.text_image_index, ks)
            results.append({"precision": actual[precision], "fast": fast or "off", "metrics": metrics})
    first = results[0]["metrics"]
    for r in results[1:]:
        r["delta"] = {k: v - first[k] for k, v in r["metrics"].items()}

    print(f"{data.source}: {len(kept.images)} images, {len(kept.captions)} captions; model {model_name}")
    if failed:
        print(f"{len(failed)} unreadable images left out with their {excluded_captions} captions")
    print("\n".join(table(results, ks)))
    if args.report:
        report_out = {
            "task": "zeroshot_retrieval",
            "dataset": data.source,
            "model": model_name,
            "images": len(kept.images),
            "captions": len(kept.captions),
            "failed_images": len(failed),
            "excluded_captions": excluded_captions,
            "failed": [{"index": i, "image": data.images[i], "error": failed[i]} for i in sorted(failed)],
            "note": "unreadable images are left out together with their captions, in every configuration; "
                    "recalls (clip_benchmark's keys), mAP, precision@K and ndcg@K are fractions, rsum is in "
                    "percent; see fastclip.retrieval.metrics for the definitions",
            "ks": list(ks),
            "metrics": first,
            "configurations": results,
        }
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report_out, indent=2) + "\n", encoding="utf-8")
        log(f"report -> {path}")
    return 1 if failed else 0


def _label(precision: str | None, fast: str | None) -> str:
    return f"{precision or 'default'}, fast {fast or 'off'}"


def table(results: list[dict], ks) -> list[str]:
    """Two tables, each with a row per configuration (deltas against the first under it) and both directions
    side by side: Recall@K, ranks and MRR (with the gap between directions); then mAP, P@K and nDCG@K."""
    # (header, key suffix, scale, decimals, decimals of a delta)
    recall = [(f"R@{k}", f"recall@{k}", 100, 1, 1) for k in ks] + [
        ("mean", "mean_rank", 1, 1, 2), ("median", "median_rank", 1, 1, 2), ("MRR", "mrr", 1, 3, 3)]
    ranking = [("mAP", "mAP", 100, 1, 1)] + [(f"P@{k}", f"precision@{k}", 100, 1, 1) for k in ks] + [
        (f"nDCG@{k}", f"ndcg@{k}", 100, 1, 1) for k in ks]
    gap = "".join(f"{'R@' + str(k):>8}" for k in ks)[1:]
    lines = _section(results, recall, ("gap i->t minus t->i", gap, lambda m: "".join(
        f"{100 * (m[f'text_retrieval_recall@{k}'] - m[f'image_retrieval_recall@{k}']):+8.1f}" for k in ks)))
    lines.append("recalls in %; mean/median: rank of the correct image (t->i) or of the image's best caption (i->t)")
    lines.append("")
    lines += _section(results, ranking)
    lines.append("in %, over the full ranking: mAP (i->t: all captions of an image relevant), P@K = relevant in the "
                 "top K / K, nDCG@K (binary gains, log2 discount)")
    return lines


def _section(results: list[dict], columns: list[tuple], extra: tuple | None = None) -> list[str]:
    dirs = (("image_retrieval", "text -> image"), ("text_retrieval", "image -> text"))
    width = 8 * len(columns)
    head1 = f"{'':<20}" + "".join(f"| {name:<{width}}" for _, name in dirs) + (f"| {extra[0]}" if extra else "")
    head2 = f"{'configuration':<20}" + ("| " + "".join(f"{c[0]:>8}" for c in columns)[1:] + " ") * 2 + (
        f"| {extra[1]}" if extra else "")
    head1, head2 = head1.rstrip(), head2.rstrip()
    lines = [head1, head2, "-" * len(head2)]

    def cells(m: dict, prefix: str, delta: bool) -> str:
        return "".join(f"{scale * m[f'{prefix}_{key}']:{'+' if delta else ''}8.{dd if delta else d}f}"
                       for _, key, scale, d, dd in columns)

    for r in results:
        m = r["metrics"]
        lines.append(f"{_label(r['precision'], r['fast']):<20}|" + cells(m, "image_retrieval", False) + " |"
                     + cells(m, "text_retrieval", False) + (" |" + extra[2](m) if extra else ""))
        if "delta" in r:
            d = r["delta"]
            lines.append(f"{'  vs first':<20}|" + cells(d, "image_retrieval", True) + " |"
                         + cells(d, "text_retrieval", True) + (" |" if extra else ""))
    return lines
