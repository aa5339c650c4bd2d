"""`fastclip embed --engine ray`: the same inputs and options as the local engine, embedded on a Ray cluster.

--out is a folder of Parquet parts (fastclip.sinks.parts), resumable after a kill with --resume; read it
with fastclip.sinks.read_embeddings(FOLDER). The progress bar and the summary lines are the local engine's.
"""

from __future__ import annotations

import sys

from .common import UsageError, progress, report_failures
from .inputs import check_options, model_name, model_options, read_inputs


def run(args) -> int:
    from ..bulk.ray.job import embed_to_parquet
    from ..errors import ImageError, OutputError
    from ..sinks.parts import check_folder

    check_options(args, "ray")
    try:
        check_folder(args.out, resume=args.resume)  # before the model loads or Ray starts
    except OutputError as exc:
        raise UsageError(f"--out: {exc}") from None
    inputs = read_inputs(args)
    bar = progress(len(inputs.items), inputs.bar_unit)
    failures: list[str] = []

    def report(item: str, reason: str) -> None:
        failures.append(item)
        bar.write(f"fastclip: skipped {item}: {reason}", file=sys.stderr)

    extra = {} if args.rows_per_part is None else {"rows_per_file": args.rows_per_part}
    try:
        summary = embed_to_parquet(
            inputs.items, args.out, model_name(args), kind=inputs.kind, ray_address=args.ray_address,
            batch_size=args.batch_size, resume=args.resume, errors="skip" if args.skip_errors else "raise",
            on_rows=bar.update, on_error=report, **extra, **model_options(args, inputs.kind),
        )
    except OutputError as exc:
        raise UsageError(f"--out: {exc}") from None
    except ImageError as exc:
        raise ImageError(exc.index, exc.source, exc.reason + " (--skip-errors leaves unreadable images out; the "
                         "parts written so far are kept: add --resume to continue)") from None
    except KeyboardInterrupt:
        print(f"fastclip: interrupted; the parts written to {args.out} are kept: run the same command with "
              f"--resume to continue", file=sys.stderr)
        return 130
    finally:
        bar.close()
    if summary["done_before"]:
        print(f"fastclip: resumed {args.out}: {summary['done_before']} of {len(inputs.items)} inputs were done",
              file=sys.stderr)
    embedded = len(inputs.items) - summary["done_before"]
    rate = embedded / summary["seconds"] if summary["seconds"] > 0 else float("inf")
    print(f"fastclip: {summary['rows']} {inputs.unit} embedded, {summary['failed']} failed, {rate:.1f} {inputs.unit}/s "
          f"-> {args.out} ({len(summary['files'])} Parquet part(s) written, engine ray)", file=sys.stderr)
    if summary["failed"]:
        report_failures(failures, summary["failed"], f"{args.out}/_part-*.errors.jsonl")
        return 1
    return 0
