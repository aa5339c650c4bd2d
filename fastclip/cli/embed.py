"""`fastclip embed` on this machine (the local engine): images (files, folders, stdin) or texts into .npy,
.parquet or .jsonl.

Rows stream to disk through fastclip.sinks as they are made (a work folder beside OUT, replaced into
OUT atomically at the end), so memory stays flat and a killed run continues with --resume.

Exit codes: 0 all inputs embedded; 1 some inputs could not be embedded (bad image, invalid UTF-8
text) or the model failed; 2 usage (bad options, unusable --out, an interrupted run in the way, a
--resume that does not match); 130 interrupted (Ctrl-C): the previous OUT is intact, the finished work
is kept for --resume.
"""

from __future__ import annotations

import shutil
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from .common import SHOWN_FAILURES, UsageError, note, progress, report_failures
from ..defaults import IMAGE_BATCH, TEXT_BATCH
from .inputs import Inputs, check_options, model_name, model_options, read_inputs

# Texts are embedded (and checkpointed) this many at a time, rounded up to whole batches: a kill loses at
# most one chunk (~3 s of ViT-B/32 text on 2 cores), and the text tower still sorts by length within it.
TEXT_CHUNK = 1024


def run(args) -> int:
    from ..errors import OutputError
    from ..sinks import check_output, interrupted_run

    check_options(args, "local")
    try:
        out = check_output(args.out)  # before any model loading or embedding
    except OutputError as exc:
        raise UsageError(f"--out: {exc}") from None
    leftover = interrupted_run(out)
    if leftover is not None and not args.resume:
        raise UsageError(
            f"a previous run writing {out} was interrupted; its finished work is in {leftover}. "
            f"Pass --resume to continue it, or delete that folder to start over"
        )
    return Job(args, out, read_inputs(args)).run()


class Job:
    """One `fastclip embed` run: the model, the writer, and the loop between them."""

    def __init__(self, args, out: Path, inputs: Inputs):
        self.args, self.out, self.inputs = args, out, inputs
        self.failed_names: list[str] = []
        self.pool = None

    def _model(self):
        from ..embedding import ImageEmbedding, TextEmbedding

        a = self.args
        common = model_options(a, self.inputs.kind)
        if self.inputs.kind == "text":
            self.batch_size = a.batch_size or TEXT_BATCH
            options = {"batch_size": self.batch_size, "truncate": True}
            if a.language:
                options["language"] = a.language  # recorded: a resumed run must tokenize the same way
            return TextEmbedding(model_name(a), **common), options
        self.batch_size = a.batch_size or IMAGE_BATCH
        options = {"batch_size": self.batch_size, "fast": common["fast"], "exif_transpose": common["exif_transpose"]}
        return ImageEmbedding(model_name(a), **common), options

    def run(self) -> int:
        model, options = self._model()
        self.source, self.dim = model, model.dim
        if self.args.parallel is not None:
            # Worker processes may round vectors differently from this process (max abs diff 1e-6),
            # so the choice is one of the options a resumed run must repeat.
            options["parallel"] = self.args.parallel
        try:
            return self._run(model, options)
        finally:
            if self.pool is not None:
                self.pool.close()
            model.close()  # its runners: decode threads, text sessions

    def _run(self, model, options: dict) -> int:
        from ..errors import OutputError
        from ..sinks import EmbeddingsWriter, interrupted_run, make_header

        header = make_header(kind=self.inputs.kind, dim=model.dim, model=model.model_name,
                             fingerprint=model.fingerprint, precision=model.precision, normalized=True, options=options)
        total = len(self.inputs.items)
        try:
            writer = EmbeddingsWriter(self.out, header, job=self.inputs.job(), resume=self.args.resume)
        except OutputError as exc:
            raise UsageError(str(exc)) from None
        start = writer.done
        if start:
            note(f"fastclip: resuming {self.out}: {start} of {total} inputs were done "
                 f"({writer.rows} rows, {writer.failed} failed)")
        started = time.perf_counter()  # the rate counts embedding, not loading the model
        try:
            with writer:
                if not writer.finished:
                    if self.args.parallel is not None:
                        self._start_pool(model)  # after the writer: a refused --resume starts no worker
                    self._write(writer, start)
                meta = writer.finish()
        except BaseException as exc:
            kept = interrupted_run(self.out) is not None
            if not kept:
                # Stopped before the first checkpoint: the work folder holds nothing a --resume could use
                # (EmbeddingsWriter would start it over), so the failed run leaves nothing behind.
                shutil.rmtree(writer.dir, ignore_errors=True)
            if not isinstance(exc, KeyboardInterrupt):
                raise
            if writer.finished:
                print(f"fastclip: interrupted while replacing {self.out}: run the same command with --resume "
                      f"to complete it", file=sys.stderr)
            elif kept:
                print(f"fastclip: interrupted after {writer.done} of {total} inputs; {self.out} was not "
                      f"touched. The finished work is kept in {writer.dir}: run the same command with --resume "
                      f"to continue", file=sys.stderr)
            else:
                print(f"fastclip: interrupted before any input was written; {self.out} was not touched",
                      file=sys.stderr)
            return 130
        elapsed = time.perf_counter() - started
        rate = (total - start) / elapsed if elapsed > 0 else float("inf")
        unit = self.inputs.unit
        note(f"fastclip: {meta['rows']} {unit} embedded, {meta['failed']} failed, {rate:.1f} {unit}/s "
             f"-> {self.out}")
        if meta["failed"]:
            from ..sinks import errors_path

            report_failures(self.failed_names, meta["failed"], errors_path(self.out))
            return 1
        return 0

    def _start_pool(self, model) -> None:
        from ..pool import EmbeddingPool

        # One pool for the whole run: the workers start once (1-3 s each), not once per chunk.
        self.pool = self.source = EmbeddingPool(model, self.args.parallel, threads=self.args.threads)

    def _write(self, writer, start: int) -> None:
        """One writer.write (a checkpoint) per batch of images or chunk of texts, from `start`, which is
        always such a boundary: a resumed run makes the very same batches, so the very same bits."""
        from ..errors import ImageError

        bar = progress(len(self.inputs.items), self.inputs.bar_unit)
        bar.update(start)
        try:
            steps = self._texts(start) if self.inputs.kind == "text" else self._images(start)
            for items, vectors, failures in steps:
                for index, item, reason in failures:
                    if len(self.failed_names) < SHOWN_FAILURES:
                        self.failed_names.append(item)
                    bar.write(f"fastclip: skipped #{index} {item}: {reason}", file=sys.stderr)
                done = writer.done + len(items) + len(failures)
                writer.write(items, vectors, failures=failures, next_index=done)
                bar.update(len(items) + len(failures))
        except ImageError as exc:
            kept = (f"; the {writer.done} inputs before its batch are kept: add --resume to continue"
                    if writer.done else "")
            raise ImageError(exc.index, exc.source, f"{exc.reason} (--skip-errors leaves unreadable images "
                                                    f"out{kept})") from None
        finally:
            bar.close()

    def _batches(self, items, errors: str) -> Iterator:
        # The model or its EmbeddingPool: both yield EmbeddingBatch objects as they come.
        return self.source.embed_batches(items, self.batch_size, errors=errors)

    def _texts(self, start: int) -> Iterator[tuple[list[str], np.ndarray, list]]:
        texts = self.inputs.items
        # One call per chunk, as in an uninterrupted run: the text tower buckets by length within a call.
        chunk = -(-TEXT_CHUNK // self.batch_size) * self.batch_size
        for begin in range(start, len(texts), chunk):
            part = texts[begin : begin + chunk]
            vectors = [batch.vectors for batch in self._batches(part, "raise")]
            yield part, np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32), []

    def _images(self, start: int) -> Iterator[tuple[list[str], np.ndarray, list]]:
        """A FIFO or a device among the paths is refused by the decoder without blocking (fastclip.images
        opens with O_NONBLOCK and checks what it opened), as that input's failure, by name."""
        from ..errors import ImageError

        paths = self.inputs.items
        try:
            # Indices in the batches count from `start`, the first input fed.
            for batch in self._batches(islice(paths, start, None), "skip" if self.args.skip_errors else "raise"):
                failures = [(start + i, paths[start + i], exc.reason) for i, exc in sorted(batch.failures.items())]
                yield [paths[start + i] for i in batch.indices], batch.vectors, failures
        except ImageError as exc:
            index = start + exc.index
            raise ImageError(index, paths[index], exc.reason) from None

