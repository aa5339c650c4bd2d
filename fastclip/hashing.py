"""The one file hasher of the package: manifests, the session's verify=, output headers and the export use it."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

__all__ = ["sha256"]

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
