"""One reader per folder layout, each deriving one manifest; the runtime path after it is the same for all.

A reader is a module with `matches(folder) -> bool` and `read(folder) -> Manifest`. The first reader that
matches reads the folder; a folder no reader matches gets a ModelError naming what it holds.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..manifest import Manifest
from . import fastclip_folder, fastembed, immich, transformers_js

__all__ = ["READERS", "read_manifest"]

# In order: our own manifest wins over anything else the folder holds.
READERS = (fastclip_folder, fastembed, transformers_js, immich)


def read_manifest(folder: Path) -> Manifest:
    for reader in READERS:
        if reader.matches(folder):
            return reader.read(folder)
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:12] if folder.is_dir() else []
    raise ModelError(
        f"{folder}: no manifest (fastclip.json, written by `fastclip export`) and no published layout fastclip reads "
        f"(model.onnx: fastembed; onnx/*.onnx: transformers.js; visual/ or textual/model.onnx: Immich); it holds "
        f"{', '.join(found) or 'nothing'}"
    )
