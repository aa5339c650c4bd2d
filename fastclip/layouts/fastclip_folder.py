"""A folder written by `fastclip export`: its fastclip.json is the manifest."""

from __future__ import annotations

from pathlib import Path

from ..manifest import MANIFEST_NAME, Manifest, load


def matches(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file()


def read(folder: Path) -> Manifest:
    return load(folder)
