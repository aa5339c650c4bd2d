"""What both `fastclip embed` engines share: the options, the inputs (paths or texts) and the checks made
before any model is loaded.

Image paths are recorded as absolute paths (folders are expanded, relative names are joined to the working
folder), and a local model folder as its absolute path, so the output file works from any folder:
`fastclip search` finds the model and the images wherever it runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..defaults import IMAGE_BATCH, PRECISIONS, TEXT_BATCH
from .common import UsageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif", ".avif", ".heic"}
# Options that only one engine, or one kind of input, reads: given with the other they would be silently
# ignored, so they are refused.
LOCAL_ONLY = ("parallel",)
RAY_ONLY = ("ray_address", "rows_per_part")
IMAGE_ONLY = ("fast", "fast_max", "no_exif", "null")
TEXT_ONLY = ("language",)


def add_parser(sub, func) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images (files, folders, stdin) or texts into .npy, .parquet or .jsonl",
        description="Embed images or texts and write one L2-normalized vector per input, in input order. "
        "Rows stream to disk as they are made; an interrupted run continues with --resume.",
        epilog="Outputs: .npy writes FILE plus FILE.jsonl (a header line, then one {\"path\"|\"text\": ...} per "
        "row); .parquet has columns path|text and vector (needs pyarrow: the parquet extra); "
        ".jsonl has a header line, then one {\"path\"|\"text\": ..., \"vector\": [...]} per row. Inputs that "
        "failed are listed in FILE.errors.jsonl. Image paths and a model folder are recorded as absolute paths. "
        "Read any output with fastclip.sinks.read_embeddings. "
        "Exit codes: 0 ok, 1 some inputs failed, 2 usage, 130 interrupted.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (searched recursively, sorted), or - to read paths from stdin (one per line)")
    p.add_argument("--null", "-0", action="store_true", help="paths on stdin are separated by NUL bytes (find -print0), so names may contain newlines")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to embed (repeatable)")
    p.add_argument("--text-file", metavar="F", help="embed each line of F (UTF-8) as a text")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .npy, .parquet or .jsonl (--engine ray: a folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run writing the same --out (same inputs, model and options); starts afresh when there is none")
    p.add_argument("--model", metavar="MODEL", help="model folder, catalog name (`fastclip models`) or hub repo (default: clip-vit-b-32, fastembed's Qdrant/clip-ViT-B-32-vision / -text)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help=f"inputs per model call (default {IMAGE_BATCH} images, {TEXT_BATCH} texts)")
    p.add_argument("--skip-errors", action="store_true", help="report unreadable images and leave them out instead of stopping")
    p.add_argument("--precision", choices=PRECISIONS, help="pin a model variant (default: fp32 on CPU, fp16 on GPU when present)")
    p.add_argument("--language", metavar="CODE", help="source language of the texts, for towers that take one (NLLB: e.g. fra_Latn; see `fastclip info`)")
    p.add_argument("--fast", action="store_true", help="reduced JPEG decoding (>= 2x the crop): ~2.4x faster preprocessing, vectors within cosine ~3e-5 of exact")
    p.add_argument("--fast-max", action="store_true", help="reduced JPEG decoding down to the crop size: ~3.6x faster, vectors within cosine ~1e-4")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation (bit-parity with reference pipelines)")
    p.add_argument("--parallel", type=int, metavar="N", help="embed in N worker processes (0: one per core; default: this process); local engine only")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only models already cached")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: embed on a Ray cluster (needs the ray extra); --out is then a folder of Parquet parts, read back with fastclip.sinks.read_embeddings(FOLDER)")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (e.g. auto, ray://head:10001); default: a local Ray on this machine")
    p.add_argument("--rows-per-part", type=int, metavar="N", help="with --engine ray: rows per Parquet part (default 100000); a kill loses at most the part being gathered")
    p.set_defaults(func=func)


@dataclass
class Inputs:
    """What one `fastclip embed` run embeds: image paths or texts, checked, in input order."""

    kind: str  # "image" or "text"
    items: list[str]

    @property
    def unit(self) -> str:
        return "texts" if self.kind == "text" else "images"

    @property
    def bar_unit(self) -> str:
        return "text" if self.kind == "text" else "img"

    def job(self) -> dict[str, Any]:
        """What a resumed run must repeat: the count and sha256 of the exact inputs."""
        from ..sinks.header import inputs_job

        return inputs_job(self.items)


def check_options(args, engine: str) -> None:
    """The option checks both engines make before reading any input."""
    texts = bool(args.text or args.text_file)
    if texts and args.paths:
        raise UsageError("give image PATHs or --text/--text-file, not both")
    if not texts and not args.paths:
        raise UsageError("nothing to embed: give image PATHs, - for paths on stdin, or --text")
    for name in IMAGE_ONLY if texts else TEXT_ONLY:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to {'images' if texts else 'texts'} only: not used when embedding "
                             f"{'texts' if texts else 'images'}")
    for name, value in (("--batch-size", args.batch_size), ("--rows-per-part", args.rows_per_part)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1")
    if args.parallel is not None and args.parallel < 0:
        raise UsageError("--parallel must be 0 (one worker process per core) or more")
    other = RAY_ONLY if engine == "local" else LOCAL_ONLY
    for name in other:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} is not used by --engine {engine}" + (" (it needs --engine ray)" if engine == "local" else ""))


def read_inputs(args) -> Inputs:
    """The texts (--text, --text-file) or image paths (PATHs, folders, stdin) to embed; a PATH that names
    nothing is a usage error before any model loads."""
    if args.text or args.text_file:
        return Inputs("text", collect_texts(args))
    for arg in args.paths:
        if arg != "-" and not os.path.lexists(arg) and Path(arg).suffix.lower() not in IMAGE_EXTENSIONS:
            raise UsageError(f"{arg}: no such file or folder")
    items = collect_paths(args.paths, null=args.null)
    if not items:
        raise UsageError(f"no images found in {' '.join(args.paths)}")
    return Inputs("image", items)


def model_options(args, kind: str) -> dict[str, Any]:
    """The model's constructor options from the command line (both engines pass the same ones)."""
    options: dict[str, Any] = dict(cache_dir=args.cache_dir, local_files_only=args.offline, precision=args.precision,
                                   threads=args.threads)
    if kind == "image":
        options.update(fast="max" if args.fast_max else args.fast, exif_transpose=not args.no_exif)
    elif args.language:
        options["language"] = args.language  # every model of the run (and every Ray actor) tokenizes with it
    return options


def model_name(args) -> str | None:
    """--model as the output will record it: a local folder as its absolute path (see the module doc)."""
    if args.model is not None and os.path.isdir(os.path.expanduser(args.model)):
        return os.path.abspath(os.path.expanduser(args.model))
    return args.model


def collect_paths(args_paths: list[str], stdin=None, *, null: bool = False) -> list[str]:
    """Absolute paths of the files in the order given; folders expanded recursively by image extension, sorted.

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
                    out.append(os.path.abspath(os.fsdecode(raw)))
        elif os.path.isdir(arg):
            found = [str(p) for p in Path(os.path.abspath(arg)).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
            out.extend(sorted(found))
        else:
            out.append(os.path.abspath(arg))  # a missing file is reported as that input's failure, by name
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

