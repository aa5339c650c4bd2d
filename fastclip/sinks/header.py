"""The header every embeddings file carries, the same keys in every format, and how names travel in JSON.

    {"format": "fastclip-embeddings", "version": 1, "kind": "image"|"text", "dim": D, "rows": N,
     "model": ..., "fingerprint": ..., "precision": "fp32", "normalized": true, "options": {...},
     "failed": F, "created": "<UTC ISO time>", "fastclip": "<version>"}

`model` is the hub repo id, or the model folder as an absolute path, and image rows name their files by
absolute path (as `fastclip embed` records them), so a file read from any working folder still leads to
the model and the images.

Exact names: JSON is written with ensure_ascii=True. A name whose bytes are not UTF-8 travels as Python's
surrogateescape str (``"caf\\udce9.jpg"``), which JSON escapes as ``"\\udce9"``; ``exact_bytes(item)``
(``os.fsencode`` on POSIX) gives the original bytes back. Newlines are escaped by JSON, so one row is
always one line.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

FORMAT = "fastclip-embeddings"
VERSION = 1
KINDS = {"image": "path", "text": "text"}  # kind -> the key naming each row's input
# The header fields that decide the vectors: a run may only be resumed by one that agrees on all of them.
IDENTITY = ("kind", "dim", "fingerprint", "precision", "normalized", "options")


@dataclass(frozen=True)
class EmbeddingsFile:
    """A fastclip embeddings file read back: vectors[i] belongs to items[i]."""

    vectors: np.ndarray  # (N, D) float32; opened with mmap_mode="r" for .npy when mmap=True
    items: list[str]  # per row: the image path (kind "image") or the text (kind "text"), exact
    meta: dict  # the header

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def make_header(
    *,
    kind: str,
    dim: int,
    model: str,
    fingerprint: str,
    precision: str,
    normalized: bool = True,
    options: dict | None = None,
) -> dict[str, Any]:
    """The header of a new file; `rows`, `failed` and `created` are filled in when it is finished."""
    from .. import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return {
        "format": FORMAT, "version": VERSION, "kind": kind, "dim": int(dim), "rows": 0, "model": str(model),
        "fingerprint": fingerprint, "precision": precision, "normalized": bool(normalized),
        "options": dict(options or {}), "failed": 0, "created": None, "fastclip": __version__,
    }


def finished(header: dict, rows: int, failed: int) -> dict[str, Any]:
    """`header` with the counts of a finished file and its creation time."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return dict(header, rows=int(rows), failed=int(failed), created=now)


def inputs_job(items: list[str]) -> dict[str, Any]:
    """What identifies a run's inputs (count and sha256 over their exact bytes): a resume must repeat it."""
    digest = hashlib.sha256()
    for item in items:
        raw = item.encode("utf-8", "surrogateescape")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return {"inputs": len(items), "inputs_sha256": digest.hexdigest()}


def check_header(meta: Any, where: Path) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OutputError(f"{where}: not a fastclip embeddings file (no {FORMAT!r} header)")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise OutputError(f"{where}: embeddings format version {meta.get('version')!r} is newer than this "
                          f"fastclip reads ({VERSION}); upgrade fastclip")
    if meta.get("kind") not in KINDS or not isinstance(meta.get("dim"), int) or not isinstance(meta.get("rows"), int):
        raise OutputError(f"{where}: malformed header (kind, dim, rows)")
    return meta


def identity_mismatch(old: dict, new: dict) -> tuple[str, Any, Any] | None:
    """The first IDENTITY field on which two headers differ, with both values, else None."""
    for name in IDENTITY:
        if old.get(name) != new.get(name):
            return name, old.get(name), new.get(name)
    return None


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def dumps(obj: Any) -> str:
    # ensure_ascii: lone surrogates (non-UTF-8 names) become "\udcXX", so every line is plain ASCII.
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def json_line(line: bytes, where: Path, lineno: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise OutputError(f"{where}:{lineno}: not a JSON line ({exc}); the file is truncated or corrupt") from None


def exact_bytes(item: str) -> bytes:
    """The original bytes of a name read back from an embeddings file (inverse of surrogateescape)."""
    return item.encode("utf-8", "surrogateescape")


def is_utf8(item: str) -> bool:
    try:
        item.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
