"""`.jsonl`: line 1 ``{"fastclip_embeddings": <header>}``, then ``{"path"|"text": ..., "vector": [...]}`` per row.

float32 -> Python float is exact and its repr round-trips, so reading back gives the same bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import OutputError
from .header import EmbeddingsFile, KINDS, check_header, dumps, json_line
from .files import write_lines


def encode(rows: Any, header: dict, work: Path, out: Path) -> tuple[list[tuple[str, str]], dict]:
    def lines() -> Iterator[str]:
        for items, vectors, _ in rows.chunks(1024):
            for item, vector in zip(items, vectors):
                yield dumps({rows.key: item, "vector": vector.tolist()})

    write_lines(work / "final.jsonl", [dumps({"fastclip_embeddings": header})], lines())
    return [("final.jsonl", out.name)], header


def decode(path: Path, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    with open(path, "rb") as f:
        first = json_line(f.readline(), path, 1)
        meta = check_header(first.get("fastclip_embeddings") if isinstance(first, dict) else None, path)
        key, dim = KINDS[meta["kind"]], meta["dim"]
        vectors = np.empty((meta["rows"], dim), np.float32)
        items = []
        for lineno, line in enumerate(f, 2):
            rec = json_line(line, path, lineno)
            n = len(items)
            if n >= meta["rows"]:
                raise OutputError(f"{path}: more rows than the header's {meta['rows']}")
            try:
                vectors[n] = rec["vector"]
                items.append(rec[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise OutputError(f"{path}:{lineno}: malformed row ({type(exc).__name__}: {exc})") from None
    if len(items) != meta["rows"]:
        raise OutputError(f"{path}: {len(items)} rows, the header says {meta['rows']} (truncated file)")
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)
