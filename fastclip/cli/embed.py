"""`fastclip embed`: images (files, folders, stdin) or texts into .npy, .parquet or .jsonl.

Rows stream to disk through fastclip.sinks as they are made (a work folder beside OUT, replaced into
OUT atomically at the end), so memory stays flat and a killed run continues with --resume.

Exit codes: 0 all inputs embedded; 1 some inputs could not be embedded (bad image, invalid UTF-8
text) or the model failed; 2 usage (bad options, unusable --out, an interrupted run in the way, a
--resume that does not match); 130 interrupted (Ctrl-C): the previous OUT is intact, the finished work
is kept for --resume.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .common import UsageError, progress

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif", ".avif", ".heic"}
# Texts are embedded (and checkpointed) this many at a time, rounded up to whole batches: a kill loses at
# most one chunk (~3 s of ViT-B/32 text on 2 cores), and the text tower still sorts by length within it.
TEXT_CHUNK = 1024
SHOWN_FAILURES = 20  # failed inputs named on the last stderr line; all of them go to OUT.errors.jsonl


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images (files, folders, stdin) or texts into .npy, .parquet or .jsonl",
        description="Embed images or texts and write one L2-normalized vector per input, in input order. "
        "Rows stream to disk as they are made; an interrupted run continues with --resume.",
        epilog="Outputs: .npy writes FILE plus FILE.jsonl (a header line, then one {\"path\"|\"text\": ...} per "
        "row); .parquet has columns path|text and vector (needs pyarrow: pip install 'fastclip[parquet]'); "
        ".jsonl has a header line, then one {\"path\"|\"text\": ..., \"vector\": [...]} per row. Inputs that "
        "failed are listed in FILE.errors.jsonl. Read any of them with fastclip.sinks.read_embeddings. "
        "Exit codes: 0 ok, 1 some inputs failed, 2 usage, 130 interrupted.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (searched recursively, sorted), or - to read paths from stdin (one per line)")
    p.add_argument("--null", "-0", action="store_true", help="paths on stdin are separated by NUL bytes (find -print0), so names may contain newlines")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to embed (repeatable)")
    p.add_argument("--text-file", metavar="F", help="embed each line of F (UTF-8) as a text")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .npy, .parquet or .jsonl")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run writing the same --out (same inputs, model and options); starts afresh when there is none")
    p.add_argument("--model", metavar="MODEL", help="model folder or hub repo (default: Qdrant/clip-ViT-B-32-vision / -text)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="inputs per model call (default 32 images, 256 texts)")
    p.add_argument("--skip-errors", action="store_true", help="report unreadable images and leave them out instead of stopping")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="pin a model variant (default: fp32 on CPU, fp16 on GPU when present)")
    p.add_argument("--language", metavar="CODE", help="source language of the texts, for towers that take one (NLLB: e.g. fra_Latn; see `fastclip info`)")
    p.add_argument("--fast", action="store_true", help="reduced JPEG decoding (>= 2x the crop): ~2.4x faster preprocessing, vectors within cosine ~3e-5 of exact")
    p.add_argument("--fast-max", action="store_true", help="reduced JPEG decoding down to the crop size: ~3.6x faster, vectors within cosine ~1e-4")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation (bit-parity with reference pipelines)")
    p.add_argument("--parallel", type=int, metavar="N", help="embed in N worker processes (0: one per core; default: this process)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only models already cached")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: embed on a Ray cluster (needs fastclip[ray]); --out is then a folder of Parquet files (path|text, embedding, error)")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (e.g. auto, ray://head:10001); default: a local Ray on this machine")
    p.set_defaults(func=cmd_embed)


def collect_paths(args_paths: list[str], stdin=None, *, null: bool = False) -> list[str]:
    """Files in the order given; folders expanded recursively by image extension, sorted.

    Names are kept exactly: bytes that are not UTF-8 arrive as surrogateescape str (as argv does).
    Inside folders every non-folder entry with an image extension is taken, FIFOs and broken links
    included, so that they are reported as failures rather than silently missing.
    """
    out: list[str] = []
    for arg in args_paths:
        if arg == "-":
            for raw in _records(stdin if stdin is not None else sys.stdin.buffer, b"\0" if null else b"\n"):
                raw = raw if null else raw.rstrip(b"\r")
                if raw.strip():
                    out.append(os.fsdecode(raw))
        elif os.path.isdir(arg):
            found = [str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
            out.extend(sorted(found))
        else:
            out.append(arg)  # a missing file is reported as that input's failure, by name
    return out


def _records(stream, sep: bytes, block: int = 1 << 20) -> Iterator[bytes]:
    """`sep`-separated records of a binary stream, read a block at a time (a million paths is ~100 MB)."""
    rest = b""
    while chunk := stream.read(block):
        *records, rest = (rest + chunk).split(sep)
        yield from records
    if rest:
        yield rest


def _bad_utf8(text: str) -> str | None:
    """Why `text` (from argv, where Python keeps undecodable bytes as lone surrogates) is not UTF-8."""
    for column, ch in enumerate(text, 1):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            byte = f"byte 0x{ord(ch) - 0xDC00:02x}" if ord(ch) >= 0xDC80 else f"code point U+{ord(ch):04X}"
            return f"not valid UTF-8 ({byte} at character {column})"
    return None


def collect_texts(args) -> list[str]:
    """--text values then --text-file lines, checked to be UTF-8: TextError names the first bad one."""
    from ..errors import TextError

    texts: list[str] = []
    for text in args.text:
        reason = _bad_utf8(text)
        if reason:
            raise TextError(len(texts), f"--text argument {text!r}: {reason}")
        texts.append(text)
    if args.text_file:
        try:
            with open(args.text_file, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]  # a UTF-8 byte-order mark is not part of the first text
                    raw = raw.rstrip(b"\r\n")
                    try:
                        texts.append(raw.decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        raise TextError(
                            len(texts),
                            f"{args.text_file} line {lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                            f"{exc.start + 1} of the line); save the file as UTF-8",
                        ) from None
        except OSError as exc:
            raise UsageError(f"--text-file: {exc}") from None
    return texts


def _inputs_digest(items: list[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        raw = item.encode("utf-8", "surrogateescape")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def _not_regular(path: str) -> str | None:
    """Why `path` must not be opened (reading a FIFO or a device would block or never end), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the decoder reports it by name
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"is {kind}, not an image file"


def cmd_embed(args) -> int:
    if getattr(args, "engine", "local") == "ray":
        from .embed_ray import cmd_embed_ray

        return cmd_embed_ray(args)
    from ..errors import OutputError
    from ..sinks import check_output, interrupted_run

    texts_mode = bool(args.text or args.text_file)
    if texts_mode and args.paths:
        raise UsageError("give image PATHs or --text/--text-file, not both")
    if not texts_mode and not args.paths:
        raise UsageError("nothing to embed: give image PATHs, - for paths on stdin, or --text")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.parallel is not None:
        if args.parallel < 0:
            raise UsageError("--parallel must be 0 (one worker process per core) or more")
        try:
            from ..bulk import pool  # noqa: F401
        except ImportError:
            raise UsageError("--parallel is not available in this version of fastclip") from None
    try:
        out = check_output(args.out)  # before any model loading or embedding
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    leftover = interrupted_run(out)
    if leftover is not None and not args.resume:
        raise UsageError(
            f"a previous run writing {out} was interrupted; its finished work is in {leftover}. "
            f"Pass --resume to continue it, or delete that folder to start over"
        )
    if texts_mode:
        inputs = collect_texts(args)
    else:
        inputs = collect_paths(args.paths, null=args.null)
        if not inputs:
            raise UsageError(f"no images found in {' '.join(args.paths)}")
    return Job(args, out, inputs, "text" if texts_mode else "image").run()


class Job:
    """One `fastclip embed` run: the model, the writer, and the loop between them."""

    def __init__(self, args, out: Path, inputs: list[str], kind: str):
        self.args, self.out, self.inputs, self.kind = args, out, inputs, kind
        self.failed_names: list[str] = []
        self.unit = "texts" if kind == "text" else "images"

    def _model(self):
        from ..embedding import ImageEmbedding, TextEmbedding

        a = self.args
        common: dict[str, Any] = dict(cache_dir=a.cache_dir, local_files_only=a.offline, precision=a.precision, threads=a.threads)
        if self.kind == "text":
            self.batch_size = a.batch_size or 256
            options = {"batch_size": self.batch_size, "truncate": True}
            if getattr(a, "language", None):
                options["language"] = a.language  # recorded: a resumed run must tokenize the same way
            return TextEmbedding(a.model, language=getattr(a, "language", None), **common), options
        self.batch_size = a.batch_size or 32
        fast = "max" if a.fast_max else a.fast
        model = ImageEmbedding(a.model, fast=fast, exif_transpose=not a.no_exif, **common)
        return model, {"batch_size": self.batch_size, "fast": fast, "exif_transpose": not a.no_exif}

    def run(self) -> int:
        model, options = self._model()
        self.embed = model.embed
        self.pool = None
        if self.args.parallel is not None:
            # Worker processes may round vectors differently from this process (max abs diff 1e-6),
            # so the choice is one of the options a resumed run must repeat.
            options["parallel"] = self.args.parallel
        try:
            return self._run(model, options)
        finally:
            if self.pool is not None:
                self.pool.close()
            close = getattr(model, "close", None)  # runners with a lifetime (decode threads, text sessions)
            if close is not None:
                close()

    def _start_pool(self, model) -> None:
        from ..bulk.pool import EmbeddingPool

        # One pool for the whole run: the workers start once (1-3 s each), not once per chunk.
        self.pool = EmbeddingPool(model, self.args.parallel, threads=self.args.threads)
        self.embed = self.pool.embed

    def _run(self, model, options: dict) -> int:
        from ..errors import OutputError
        from ..manifest import tower_fingerprint
        from ..sinks import EmbeddingsWriter, make_header

        fingerprint = getattr(model, "fingerprint", None) or tower_fingerprint(model.folder, model.spec)
        header = make_header(kind=self.kind, dim=model.dim, model=model.model_name, fingerprint=fingerprint,
                             precision=model.precision, normalized=True, options=options)
        job = {"inputs": len(self.inputs), "inputs_sha256": _inputs_digest(self.inputs)}
        try:
            writer = EmbeddingsWriter(self.out, header, job=job, resume=self.args.resume)
        except OutputError as exc:
            raise UsageError(str(exc)) from None
        start = writer.done
        if start:
            print(f"fastclip: resuming {self.out}: {start} of {len(self.inputs)} inputs were done "
                  f"({writer.rows} rows, {writer.failed} failed)", file=sys.stderr)
        started = time.perf_counter()  # the rate counts embedding, not loading the model
        try:
            with writer:
                if not writer.finished:
                    if self.args.parallel is not None:
                        self._start_pool(model)  # after the writer: a refused --resume starts no worker
                    loop = self._texts if self.kind == "text" else self._images
                    loop(model, writer, start)
                meta = writer.finish()
        except KeyboardInterrupt:
            if writer.finished:
                print(f"fastclip: interrupted while replacing {self.out}: run the same command with --resume "
                      f"to complete it", file=sys.stderr)
            else:
                print(f"fastclip: interrupted after {writer.done} of {len(self.inputs)} inputs; {self.out} was not "
                      f"touched. The finished work is kept in {writer.dir}: run the same command with --resume "
                      f"to continue", file=sys.stderr)
            return 130
        elapsed = time.perf_counter() - started
        done_now = len(self.inputs) - start
        rate = done_now / elapsed if elapsed > 0 else float("inf")
        print(f"fastclip: {meta['rows']} {self.unit} embedded, {meta['failed']} failed, {rate:.1f} {self.unit}/s "
              f"-> {self.out}", file=sys.stderr)
        if meta["failed"]:
            from ..sinks import errors_path

            shown = ", ".join(self.failed_names[:SHOWN_FAILURES])
            more = meta["failed"] - min(len(self.failed_names), SHOWN_FAILURES)
            extra = f" and {more} more" if more > 0 else ""
            print(f"fastclip: failed: {shown}{extra} (all listed in {errors_path(self.out)})", file=sys.stderr)
            return 1
        return 0

    def _texts(self, model, writer, start: int) -> None:
        import numpy as np

        chunk = -(-TEXT_CHUNK // self.batch_size) * self.batch_size
        bar = progress(len(self.inputs), "text")
        bar.update(start)
        try:
            for begin in range(start, len(self.inputs), chunk):
                texts = self.inputs[begin : begin + chunk]
                vectors = np.stack(list(self.embed(texts, batch_size=self.batch_size)))
                writer.write(texts, vectors, next_index=begin + len(texts))
                bar.update(len(texts))
        finally:
            bar.close()

    def _images(self, model, writer, start: int) -> None:
        import numpy as np

        from ..errors import ImageError

        skip = self.args.skip_errors
        special: dict[int, str] = {}  # input index -> why it was not opened
        errors: list[ImageError] = []

        def feed() -> Iterator[Any]:
            for i in range(start, len(self.inputs)):
                reason = _not_regular(self.inputs[i])
                if reason:
                    special[i] = reason
                    yield b""  # fails to decode at once, keeping its place in its batch
                else:
                    yield self.inputs[i]

        def explain(error: ImageError) -> tuple[int, str, str]:
            index = start + error.index
            return index, self.inputs[index], special.pop(index, error.reason)

        bar = progress(len(self.inputs), "img")
        bar.update(start)
        stream = self.embed(feed(), batch_size=self.batch_size, errors="skip" if skip else "raise",
                            on_error=errors.append)
        items: list[str] = []
        vectors: list = []
        failures: list[tuple[int, str, str]] = []
        index = start
        try:
            # Checkpoints fall on the same batch boundaries as in an uninterrupted run (multiples of
            # batch_size from the first input), so a resumed run gives the very same batches and bits.
            for vector in stream:
                if vector is None:
                    failure = explain(errors.pop(0))
                    failures.append(failure)
                    if len(self.failed_names) < SHOWN_FAILURES:
                        self.failed_names.append(failure[1])
                    bar.write(f"fastclip: skipped #{failure[0]} {failure[1]}: {failure[2]}", file=sys.stderr)
                else:
                    items.append(self.inputs[index])
                    vectors.append(vector)
                index += 1
                if index % self.batch_size == 0 or index == len(self.inputs):
                    matrix = np.stack(vectors) if vectors else np.zeros((0, model.dim), np.float32)
                    writer.write(items, matrix, failures=failures, next_index=index)
                    bar.update(len(items) + len(failures))
                    items, vectors, failures = [], [], []
        except ImageError as exc:
            i, source, reason = explain(exc)
            kept = (f"; the {writer.done} inputs before its batch are kept: add --resume to continue"
                    if writer.done else "")
            raise ImageError(i, source, f"{reason} (--skip-errors leaves unreadable images out{kept})") from None
        finally:
            bar.close()
