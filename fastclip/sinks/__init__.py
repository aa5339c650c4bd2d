"""Embeddings files: the writers (streaming, atomic, resumable) and the reader, for .npy, .jsonl, .parquet
and folders of Parquet parts (Ray).

Every producer (the `fastclip embed` command, bulk jobs, Ray) and every consumer (search, evaluation) goes
through this package. The contract on disk is in the README ("Bulk jobs: streaming, resume, output files");
each piece is documented where it lives:

    header.py    the header every file carries, and how exact names travel in JSON
    formats.py   the table of formats keyed by suffix, the checks on an output path, the errors file's line
    npy.py, jsonl.py, parquet.py   one encoder + decoder per format
    journal.py   the work folder beside OUT: journal, recovery after a kill, the rename protocol
    parts.py     a folder of Parquet parts written in any order (--engine ray), read back in input order
    files.py     durable steps (fsync, atomic JSON, renames, the lock on an output) and the kill tests'
                 fault injection

``OUT.<suffix>.errors.jsonl`` (only when some inputs failed) lists ``{"index": i, "path": ..., "error": "..."}``
per failed input. Failed inputs are not rows; the header's ``"failed"`` counts them. A finished run without
failures removes a stale errors file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError
from .formats import FORMATS, SUFFIXES, check_output, errors_path, output_files
from .header import FORMAT, VERSION, EmbeddingsFile, exact_bytes, make_header
from .journal import EmbeddingsWriter, interrupted_run, partial_dir
from .parts import PartsWriter, read_parts


def read_embeddings(path: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    """Read what `fastclip embed` wrote: .npy (+ its side file), .jsonl, .parquet, or a Ray run's folder.

    Raises OutputError when the file is not a fastclip embeddings file, is unreadable, an .npy and its
    side file do not belong together (rows, dim or sha256 differ: an interrupted or mixed-up write), or a
    Ray folder misses inputs (an interrupted run). verify=False skips hashing the .npy (rows and dim are
    still checked); mmap=False loads it into memory. Passing the side file (OUT.npy.jsonl) reads OUT.npy.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return read_parts(path)
        found = FORMATS.get(path.suffix.lower())
        if found is None:
            raise OutputError(f"{path}: not an embeddings file (expected {', '.join(SUFFIXES)} or a Ray output folder)")
        return found.codec.decode(path, mmap=mmap, verify=verify)
    except OSError as exc:
        raise OutputError(f"{path}: cannot read ({exc.strerror or exc})") from None


__all__ = [
    "EmbeddingsFile", "EmbeddingsWriter", "PartsWriter", "read_embeddings", "make_header", "check_output",
    "partial_dir", "interrupted_run", "output_files", "errors_path", "exact_bytes", "FORMAT", "VERSION", "SUFFIXES",
    "FORMATS",
]
