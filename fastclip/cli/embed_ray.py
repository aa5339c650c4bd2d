"""`fastclip embed --engine ray`: the same inputs as the local engine, embedded on a Ray cluster.

--out is a folder of Parquet parts (path|text, embedding, error); see fastclip.bulk.ray.embed_to_parquet.
The progress bar and the summary lines are the local engine's.
"""

from __future__ import annotations

import sys
from typing import Any

from .common import UsageError, progress


def cmd_embed_ray(args) -> int:
    from ..bulk.ray import embed_to_parquet
    from ..errors import ImageError, TextError
    from .embed import collect_paths, collect_texts

    texts_mode = bool(args.text or args.text_file)
    if texts_mode and args.paths:
        raise UsageError("give image PATHs or --text/--text-file, not both")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if texts_mode:
        inputs, kind, unit = collect_texts(args), "text", "texts"
    else:
        if not args.paths:
            raise UsageError("nothing to embed: give image PATHs, - for paths on stdin, or --text")
        null = getattr(args, "null", False)
        inputs = collect_paths(args.paths, null=True) if null else collect_paths(args.paths)
        if not inputs:
            raise UsageError(f"no images found in {' '.join(args.paths)}")
        kind, unit = "image", "images"
    options: dict[str, Any] = {"cache_dir": args.cache_dir, "local_files_only": args.offline,
                               "precision": args.precision, "threads": args.threads}
    if kind == "image":
        options.update(fast="max" if args.fast_max else args.fast, exif_transpose=not args.no_exif)
    elif getattr(args, "language", None):
        options["language"] = args.language  # a TextEmbedding option: every actor tokenizes with it
    bar = progress(len(inputs), "text" if texts_mode else "img")
    failures: list[str] = []

    def report(item: str, reason: str) -> None:
        failures.append(item)
        bar.write(f"fastclip: skipped {item}: {reason}", file=sys.stderr)

    try:
        summary = embed_to_parquet(
            inputs, args.out, args.model, kind=kind, ray_address=args.ray_address, batch_size=args.batch_size,
            errors="skip" if args.skip_errors else "raise", on_rows=bar.update, on_error=report,
            **options,
        )
    except ImageError as exc:
        raise ImageError(exc.index, exc.source, exc.reason + " (--skip-errors leaves unreadable images out)") from None
    except TextError:
        raise
    finally:
        bar.close()
    rate = len(inputs) / summary["seconds"] if summary["seconds"] > 0 else float("inf")
    print(f"fastclip: {summary['embedded']} {unit} embedded, {summary['failed']} failed, {rate:.1f} {unit}/s "
          f"-> {args.out} ({len(summary['files'])} Parquet file(s), engine ray)", file=sys.stderr)
    if failures:
        print("fastclip: failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0
