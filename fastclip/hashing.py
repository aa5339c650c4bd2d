"""The one file hasher of the package: manifests, the session's verify=, output headers and the export use it;
and the fingerprint of a tower's weights built on it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelError

__all__ = ["sha256", "tower_fingerprint"]

HASH_BLOCK = 1 << 22  # model files run to gigabytes: stream them 4 MiB at a time


def sha256(source: str | os.PathLike | BinaryIO) -> str:
    """Hex sha256 of a file: a path, or a binary file object read from its start."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return sha256(f)
    digest = hashlib.sha256()
    source.seek(0)
    while block := source.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


_fingerprints: dict[tuple, str] = {}


def tower_fingerprint(folder: str | Path, spec: Any) -> str:
    """Which weights a tower holds: the sha256 hex of its fp32 ONNX file (no fp32: the first listed precision).

    Embeddings files record it so that vectors from different weights are never compared. The manifest's
    recorded sha256 is used when present, else the file is hashed once per process (cached by path, size
    and mtime). When the weights live in ONNX external data the .onnx file alone does not identify them,
    so the fingerprint is then the sha256 of the lines "<onnx sha256>" and "<relative path> <sha256>" of
    each external-data file, in the listed order.
    """
    precision = "fp32" if "fp32" in spec.files else next(iter(spec.files))
    entry = spec.files[precision]
    folder = Path(folder)

    def digest(rel: str, recorded: str | None) -> str:
        if recorded:
            return recorded
        path = folder / rel
        try:
            st = path.stat()
        except OSError as exc:
            raise ModelError(f"{path}: cannot fingerprint the model file ({exc})") from None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _fingerprints:
            _fingerprints[key] = sha256(path)
        return _fingerprints[key]

    main = digest(entry.path, entry.sha256)
    if not entry.external_data:
        return main
    lines = [main] + [f"{rel} {digest(rel, entry.external_data_sha256.get(rel))}" for rel in entry.external_data]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
