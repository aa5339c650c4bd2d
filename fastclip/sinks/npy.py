"""`.npy`: float32 (rows, dim), one row per embedded input, in input order, and a side file ``OUT.npy.jsonl``:
line 1 the header plus ``"npy_sha256"`` (sha256 of OUT.npy's bytes, so a reader notices an .npy and a side
file from different runs), then one ``{"path": ...}`` or ``{"text": ...}`` per row.

The journal appends vectors to an .npy whose header says 0 rows and rewrites that header in place at the
end. numpy's own header writer pads the header so that the row count can grow to 21 digits without moving
the data (numpy.lib.format, "growth axis"), so the data offset never changes: 128 bytes for every dim up
to 10^12 (the same bytes fastclip 0.1 wrote by hand).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from ..errors import OutputError
from ..hashing import sha256
from .header import FORMAT, EmbeddingsFile, KINDS, check_header, dumps, json_line
from .files import fault, write_lines

DTYPE = "<f4"


def npy_header(rows: int, dim: int) -> bytes:
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": DTYPE, "fortran_order": False, "shape": (int(rows), int(dim))})
    return buffer.getvalue()


def data_offset(dim: int) -> int:
    return len(npy_header(0, dim))


def seal(path: Path, rows: int, dim: int) -> None:
    """Cut an appended .npy to `rows` rows and write their count into its header, in place."""
    head = npy_header(rows, dim)
    if len(head) != data_offset(dim):  # numpy's padding guarantees it; a future numpy might not
        raise OutputError(f"{path}: numpy's .npy header for {rows} rows no longer fits in place")
    with open(path, "r+b") as f:
        f.truncate(len(head) + rows * 4 * dim)
        f.seek(0)
        f.write(head)
        f.flush()
        os.fsync(f.fileno())


def side_file(out: Path) -> Path:
    return out.with_name(out.name + ".jsonl")


def side_files(out: Path) -> list[Path]:
    return [side_file(out)]


def encode(rows: Any, header: dict, work: Path, out: Path) -> tuple[list[tuple[str, str]], dict]:
    path = rows.vectors_file
    if path is None:  # rows held in memory: lay them out as the journal does
        path = work / "vectors.npy"
        with open(path, "wb") as f:
            f.write(npy_header(0, rows.dim))
            for _, vectors, _ in rows.chunks(4096):
                f.write(np.ascontiguousarray(vectors, DTYPE).tobytes())
    seal(path, rows.count, rows.dim)
    header = dict(header, npy_sha256=sha256(path))
    fault("finish-npy")
    write_lines(work / "side.jsonl", [dumps(header)], rows.item_lines())
    # The side file first: between the two renames a reader sees the old .npy beside the new side file
    # and refuses the pair through npy_sha256.
    return [("side.jsonl", side_file(out).name), (path.name, out.name)], header


def npy_of_side_file(path: Path) -> Path | None:
    """The .npy whose side file `path` is (named OUT.npy.jsonl, its first line the header with "npy_sha256"),
    else None: a plain .jsonl of embeddings."""
    if not path.name.lower().endswith(".npy.jsonl"):
        return None
    with open(path, "rb") as f:
        first = json_line(f.readline(), path, 1)
    if isinstance(first, dict) and first.get("format") == FORMAT and "npy_sha256" in first:
        return path.with_name(path.name[: -len(".jsonl")])
    return None


def decode(path: Path, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    side = side_file(path)
    path.stat()  # a missing .npy is reported as missing, not as a missing side file
    if not side.exists():
        old = path.with_name(path.name + ".paths.txt")
        hint = f" ({old.name} is from fastclip 0.1, which did not record names exactly: embed again)" if old.exists() else ""
        raise OutputError(f"{path}: no side file {side.name}, so the rows cannot be matched to inputs{hint}")
    with open(side, "rb") as f:
        meta = check_header(json_line(f.readline(), side, 1), side)
        items = _read_items(f, KINDS[meta["kind"]], side)
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise OutputError(f"{path}: not a readable .npy ({exc})") from None
    where = f"{path} and {side.name} do not belong together"
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise OutputError(f"{path}: expected a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
    if vectors.shape != (meta["rows"], meta["dim"]) or len(items) != meta["rows"]:
        raise OutputError(f"{where}: the .npy has shape {vectors.shape}, the side file lists {len(items)} rows of "
                          f"dim {meta['dim']} (an interrupted or mixed-up write; embed again or --resume)")
    if verify and meta.get("npy_sha256") != sha256(path):
        raise OutputError(f"{where}: the .npy's sha256 is not the one the side file records (files from "
                          f"different runs, or a write was interrupted; embed again or --resume)")
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)


def _read_items(f, key: str, where: Path, first_lineno: int = 2) -> list[str]:
    items = []
    for lineno, line in enumerate(f, first_lineno):
        rec = json_line(line, where, lineno)
        if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
            raise OutputError(f"{where}:{lineno}: expected a {{\"{key}\": ...}} row")
        items.append(rec[key])
    return items
