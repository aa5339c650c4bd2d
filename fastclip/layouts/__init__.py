"""One reader per folder layout, each deriving one manifest; the runtime path after it is the same for all.

A reader is a module with `matches(folder) -> bool` and `read(folder) -> Manifest`. The first reader that
matches reads the folder; a folder no reader matches gets a ModelError naming what it holds.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..manifest import Manifest
from . import fastclip_folder, fastembed

__all__ = ["READERS", "read_manifest"]

# In order: our own manifest wins over anything else the folder holds.
READERS = (fastclip_folder, fastembed)


def read_manifest(folder: Path) -> Manifest:
    for reader in READERS:
        if reader.matches(folder):
            return reader.read(folder)
    raise ModelError(
        f"{folder}: neither a fastclip model folder (fastclip.json) nor a tower folder (model.onnx); "
        "export one with `fastclip export`"
    )
