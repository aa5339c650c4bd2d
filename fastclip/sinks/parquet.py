"""`.parquet`: columns ``path`` or ``text`` (string) and ``vector`` (fixed_size_list<float32>[dim]), the header
as JSON in the schema metadata under the key ``fastclip``.

Parquet strings must be valid UTF-8, so when any name is not, a binary column ``path_bytes`` (``text_bytes``)
holds the exact bytes of those rows (null for the others) and ``path`` shows them with U+FFFD in place of
the bad bytes. Rows that carry their input index (the parts of a Ray run, see parts.py) have a first
column ``index`` (int64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from ..hints import install_hint
from .header import EmbeddingsFile, KINDS, check_header, exact_bytes, is_utf8
from .files import fsync_file

# Rows per Parquet row group (8 MB at 512-d). Measured finishing 100k rows: 16,384-row groups raised the
# peak RSS by 67 MB over a 10k-row file, 4,096-row groups by 6 MB.
ROW_GROUP = 4096
def needs() -> str:
    return f".parquet files need pyarrow: {install_hint('parquet')}"


def import_pyarrow():
    """(pyarrow, pyarrow.parquet), or OutputError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError(needs()) from None
    return pa, pq


def encode(rows: Any, header: dict, work: Path, out: Path) -> tuple[list[tuple[str, str]], dict]:
    write(work / "final.parquet", rows, header)
    return [("final.parquet", out.name)], header


def write(path: Path, rows: Any, header: dict) -> None:
    """`rows` (see journal.Rows) into one Parquet file at `path`, fsynced."""
    pa, pq = import_pyarrow()
    key, dim = rows.key, rows.dim
    # Parquet strings must be UTF-8: one pass over the names decides whether a bytes column is needed.
    exact = any(not is_utf8(item) for item in rows.items())
    fields = [pa.field(key, pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))]
    if rows.indexed:
        fields.insert(0, pa.field("index", pa.int64()))
    if exact:
        fields.append(pa.field(f"{key}_bytes", pa.binary()))
    schema = pa.schema(fields, metadata={"fastclip": json.dumps(header, ensure_ascii=True)})
    # No dictionary encoding: vectors and paths are all distinct, and trying it cost ~60 % of the write.
    with pq.ParquetWriter(path, schema, use_dictionary=False) as writer:
        for items, vectors, indices in rows.chunks(ROW_GROUP):
            flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
            columns = [
                pa.array([exact_bytes(i).decode("utf-8", "replace") for i in items], pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, dim),
            ]
            if rows.indexed:
                columns.insert(0, pa.array(indices, pa.int64()))
            if exact:
                columns.append(pa.array([None if is_utf8(i) else exact_bytes(i) for i in items], pa.binary()))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    fsync_file(path)


def read(path: Path) -> tuple[dict, list[str], np.ndarray, np.ndarray | None]:
    """(header, items, vectors, input indices or None) of one Parquet file, rows as stored."""
    _, pq = import_pyarrow()
    try:
        table = pq.read_table(path)
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/ArrowIOError types
        raise OutputError(f"{path}: not a readable Parquet file ({exc})") from None
    raw = (table.schema.metadata or {}).get(b"fastclip")
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    meta = check_header(meta, path)
    key, dim = KINDS[meta["kind"]], meta["dim"]
    if key not in table.column_names or "vector" not in table.column_names or table.num_rows != meta["rows"]:
        raise OutputError(f"{path}: expected columns {key!r} and 'vector' with {meta['rows']} rows")
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)
    items = table.column(key).to_pylist()
    if f"{key}_bytes" in table.column_names:
        exact = table.column(f"{key}_bytes").to_pylist()
        items = [i if b is None else b.decode("utf-8", "surrogateescape") for i, b in zip(items, exact)]
    indices = table.column("index").to_numpy() if "index" in table.column_names else None
    return meta, items, vectors, indices


def decode(path: Path, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    meta, items, vectors, _ = read(path)
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)
