"""Image-caption datasets for retrieval evaluation: one row per caption, or Karpathy-style JSON.

* CSV / TSV / JSONL / Parquet with columns ``image`` and ``caption``, one row per caption (an image
  with five captions has five rows). Image paths are relative to the dataset file's folder unless a
  root is given.
* Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``):
  ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw": ...}, ...]}, ...]}``;
  the images of one split (``test`` by default) under ``root/filepath/filename``.

Images keep the order of their first appearance and captions the file's order, so the numbers
depend only on the file.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FastClipError
from ..hints import install_hint

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet", ".json")


class DatasetError(FastClipError, ValueError):
    """The dataset file cannot be read as image-caption pairs; the message names the file and the row."""


@dataclass(frozen=True)
class CaptionDataset:
    images: list[str]  # image paths, resolved against the root
    captions: list[str]
    text_image_index: np.ndarray  # (n_captions,) index into images
    source: str

    def without_images(self, failed: set[int]) -> CaptionDataset:
        """The dataset without some images and their captions (indices renumbered)."""
        keep = [i for i in range(len(self.images)) if i not in failed]
        renumber = np.full(len(self.images), -1, np.int64)
        renumber[keep] = np.arange(len(keep))
        rows = [j for j, i in enumerate(self.text_image_index) if i not in failed]
        return CaptionDataset(
            [self.images[i] for i in keep], [self.captions[j] for j in rows],
            renumber[self.text_image_index[rows]] if rows else np.zeros(0, np.int64), self.source,
        )


def load_captions(path: str | os.PathLike, *, images_root: str | os.PathLike | None = None,
                  split: str = "test") -> CaptionDataset:
    """Read a dataset file (format by suffix, see the module doc)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DatasetError(f"{path}: unknown dataset format (expected one of {', '.join(FORMATS)})")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    root = Path(images_root) if images_root is not None else path.parent
    if suffix == ".json":
        pairs = _karpathy(path, split)
    elif suffix == ".parquet":
        pairs = _parquet(path)
    elif suffix == ".jsonl":
        pairs = _jsonl(path)
    else:
        pairs = _delimited(path, "\t" if suffix == ".tsv" else ",")
    if not pairs:
        raise DatasetError(f"{path}: no image-caption rows" + (f" in split {split!r}" if suffix == ".json" else ""))
    images: dict[str, int] = {}
    index = []
    for image, _ in pairs:
        index.append(images.setdefault(image, len(images)))
    resolved = [str(root / image) for image in images]
    return CaptionDataset(resolved, [c for _, c in pairs], np.asarray(index, np.int64), str(path))


def _row(path: Path, where: str, image, caption) -> tuple[str, str]:
    if not isinstance(image, str) or not image.strip():
        raise DatasetError(f"{path}: {where}: empty or missing image")
    if not isinstance(caption, str) or not caption.strip():
        raise DatasetError(f"{path}: {where}: empty or missing caption")
    return image.strip(), caption


def _need_columns(path: Path, columns) -> None:
    missing = [c for c in ("image", "caption") if c not in columns]
    if missing:
        raise DatasetError(f"{path}: no {' or '.join(repr(m) for m in missing)} column (columns: {list(columns)}); "
                           "one row per caption with columns image, caption")


def _delimited(path: Path, delimiter: str) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        _need_columns(path, reader.fieldnames or [])
        return [_row(path, f"line {reader.line_num}", r["image"], r["caption"]) for r in reader]


def _jsonl(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}: line {lineno}: not JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}: line {lineno}: expected an object with image and caption")
            if lineno == 1:
                _need_columns(path, rec)
            pairs.append(_row(path, f"line {lineno}", rec.get("image"), rec.get("caption")))
    return pairs


def _parquet(path: Path) -> list[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet needs pyarrow: {install_hint('parquet')}") from None
    table = pq.read_table(path)
    _need_columns(path, table.column_names)
    images, captions = table.column("image").to_pylist(), table.column("caption").to_pylist()
    return [_row(path, f"row {i}", a, b) for i, (a, b) in enumerate(zip(images, captions))]


def _karpathy(path: Path, split: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise DatasetError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f'{path}: expected Karpathy\'s format {{"images": [{{"filename", "split", "sentences"}}]}}')
    pairs, splits = [], set()
    for n, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "filename" not in entry:
            raise DatasetError(f"{path}: images[{n}]: no filename")
        splits.add(entry.get("split"))
        if entry.get("split") != split:
            continue
        image = os.path.join(entry.get("filepath") or "", entry["filename"])
        sentences = entry.get("sentences") or []
        if not sentences:
            raise DatasetError(f"{path}: images[{n}] ({image}): no sentences")
        for s, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            pairs.append(_row(path, f"images[{n}].sentences[{s}]", image, raw))
    if not pairs:
        raise DatasetError(f"{path}: no images in split {split!r} (splits present: {sorted(map(str, splits))})")
    return pairs


__all__ = ["FORMATS", "CaptionDataset", "DatasetError", "load_captions"]
