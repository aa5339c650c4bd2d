"""`fastclip embed`: images (files, folders, stdin) or texts into .npy, .parquet or .jsonl."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .common import UsageError, progress

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif", ".avif", ".heic"}
OUTPUT_FORMATS = (".npy", ".parquet", ".jsonl")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images (files, folders, stdin) or texts into .npy, .parquet or .jsonl",
        description="Embed images or texts and write one L2-normalized vector per input, in input order.",
        epilog="Outputs: .npy writes FILE plus FILE.paths.txt (images) or FILE.texts.jsonl (texts) listing "
        "the inputs in row order; .parquet has columns path|text and vector (needs pyarrow: "
        "pip install 'fastclip[parquet]'); .jsonl has one {\"path\"|\"text\": ..., \"vector\": [...]} per line.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (searched recursively, sorted), or - to read paths from stdin")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to embed (repeatable)")
    p.add_argument("--text-file", metavar="F", help="embed each line of F as a text")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .npy, .parquet or .jsonl")
    p.add_argument("--model", metavar="MODEL", help="model folder or hub repo (default: Qdrant/clip-ViT-B-32-vision / -text)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="inputs per model call (default 32 images, 256 texts)")
    p.add_argument("--skip-errors", action="store_true", help="report unreadable images and leave them out instead of stopping")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="pin a model variant (default: fp32 on CPU, fp16 on GPU when present)")
    p.add_argument("--fast", action="store_true", help="reduced JPEG decoding (>= 2x the crop): ~2.4x faster preprocessing, vectors within cosine ~3e-5 of exact")
    p.add_argument("--fast-max", action="store_true", help="reduced JPEG decoding down to the crop size: ~3.6x faster, vectors within cosine ~1e-4")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation (bit-parity with reference pipelines)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only models already cached")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: embed on a Ray cluster (needs fastclip[ray]); --out is then a folder of Parquet files (path|text, embedding, error)")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (e.g. auto, ray://head:10001); default: a local Ray on this machine")
    p.set_defaults(func=cmd_embed)



def collect_paths(args_paths: list[str], stdin=None) -> list[str]:
    """Files in the order given; folders expanded recursively by image extension, sorted."""
    out: list[str] = []
    for arg in args_paths:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            out.extend(line.rstrip("\r\n") for line in stream if line.strip())
        elif os.path.isdir(arg):
            found = [
                str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            ]
            out.extend(sorted(found))
        else:
            out.append(arg)  # a missing file is reported as that input's failure, by name
    return out


def collect_texts(args) -> list[str]:
    texts = list(args.text)
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                texts.extend(line.rstrip("\r\n") for line in f)
        except OSError as exc:
            raise UsageError(f"--text-file: {exc}") from None
    return texts


def cmd_embed(args) -> int:
    if args.engine == "ray":
        from .embed_ray import cmd_embed_ray

        return cmd_embed_ray(args)
    from ..embedding import ImageEmbedding, TextEmbedding
    from ..errors import ImageError

    out = Path(args.out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)} (got {out.name!r})")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing .parquet needs pyarrow: pip install 'fastclip[parquet]'") from None
    texts_mode = bool(args.text or args.text_file)
    if texts_mode and args.paths:
        raise UsageError("give image PATHs or --text/--text-file, not both")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    common: dict[str, Any] = dict(
        cache_dir=args.cache_dir, local_files_only=args.offline, precision=args.precision, threads=args.threads
    )
    failures: list[tuple[str, str]] = []
    if texts_mode:
        inputs = collect_texts(args)
        model = TextEmbedding(args.model, **common)
        started = time.perf_counter()  # the rate counts embedding, not loading the model
        bar = progress(len(inputs), "text")
        rows = []
        for vector in model.embed(inputs, batch_size=args.batch_size or 256):
            rows.append(vector)
            bar.update(1)
        bar.close()
        kept = inputs
        key, unit = "text", "texts"
    else:
        if not args.paths:
            raise UsageError("nothing to embed: give image PATHs, - for paths on stdin, or --text")
        inputs = collect_paths(args.paths)
        if not inputs:
            raise UsageError(f"no images found in {' '.join(args.paths)}")
        fast = "max" if args.fast_max else args.fast
        model = ImageEmbedding(args.model, fast=fast, exif_transpose=not args.no_exif, **common)
        started = time.perf_counter()
        bar = progress(len(inputs), "img")

        def report(error) -> None:
            failures.append((error.source, error.reason))
            bar.write(f"fastclip: skipped {error.source}: {error.reason}", file=sys.stderr)

        rows, kept = [], []
        stream = model.embed(
            inputs, batch_size=args.batch_size or 32, errors="skip" if args.skip_errors else "raise", on_error=report
        )
        try:
            for path, vector in zip(inputs, stream):
                bar.update(1)
                if vector is not None:
                    rows.append(vector)
                    kept.append(path)
        except ImageError as exc:
            raise ImageError(exc.index, exc.source, exc.reason + " (--skip-errors leaves unreadable images out)") from None
        finally:
            bar.close()
        key, unit = "path", "images"
    elapsed = time.perf_counter() - started
    write_output(out, key, kept, rows, dim=model.dim)
    rate = len(inputs) / elapsed if elapsed > 0 else float("inf")
    summary = f"fastclip: {len(rows)} {unit} embedded, {len(failures)} failed, {rate:.1f} {unit}/s -> {out}"
    print(summary, file=sys.stderr)
    if failures:
        print("fastclip: failed: " + ", ".join(src for src, _ in failures), file=sys.stderr)
        return 1
    return 0


def write_output(out: Path, key: str, inputs: list[str], rows: list, dim: int) -> None:
    """Write atomically: a partial file never replaces a good one."""
    import numpy as np

    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    suffix = out.suffix.lower()
    if suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, matrix)
        side = out.with_name(out.name + (".paths.txt" if key == "path" else ".texts.jsonl"))
        with open(side, "w", encoding="utf-8") as f:
            for item in inputs:
                f.write((item if key == "path" else json.dumps(item, ensure_ascii=False)) + "\n")
    elif suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for item, vector in zip(inputs, matrix):
                f.write(json.dumps({key: item, "vector": vector.tolist()}, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)
        pq.write_table(pa.table({key: pa.array(inputs, pa.string()), "vector": vectors}), tmp)
    os.replace(tmp, out)
