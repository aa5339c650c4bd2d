"""Real photos and real sentences for runtime tests (scikit-image ships the photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fastclip_export.verify import PHOTO_NAMES
from fastclip_export.verify import SENTENCES as EXPORT_SENTENCES

# The sentences every export is verified on, plus emoji, which the runtime must tokenize identically too.
SENTENCES = [*EXPORT_SENTENCES, "emoji 🐶🚀 party"]


def photo_array(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)())


def write_photos(folder: Path, names=PHOTO_NAMES) -> list[Path]:
    """Each photo as a file: JPEGs, one PNG, and the grayscale one as an L-mode PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        image = Image.fromarray(photo_array(name))
        suffix = ".png" if image.mode == "L" or i % 3 == 1 else ".jpg"
        path = folder / f"{i:02d}_{name}{suffix}"
        image.save(path, quality=92) if suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
