"""The models a server holds: each one's towers (the runtime's own classes) and one Batcher per tower.

A model's manifest is read once, here, and handed to the towers it opens: a two-tower folder would
otherwise be read three times (and a fastembed-layout folder opens an onnxruntime session per read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import CLIP, ImageEmbedding, TextEmbedding
from ..errors import ModelError
from ..model import load_manifest, resolve_folder, split_towers
from .batcher import Batcher
from .limits import Limits

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["ModelSource", "ServedModel", "load_model", "parse_model_arg"]


@dataclass(frozen=True)
class ModelSource:
    name: str  # what requests call it
    source: str  # folder or hub repo id


def parse_model_arg(value: str) -> ModelSource:
    """`--model PATH_OR_ID` (named after its last path part) or `--model NAME=PATH_OR_ID`."""
    name, sep, source = value.partition("=")
    if sep and name and "/" not in name and source:
        return ModelSource(name, source)
    source = value
    return ModelSource(Path(source.rstrip("/")).name or source, source)


@dataclass
class ServedModel:
    name: str
    folder: Path
    dim: int
    image: ImageEmbedding | None = None
    text: TextEmbedding | None = None
    clip: CLIP | None = None  # both towers of one model: /v1/classify
    batchers: dict[str, Batcher] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.batchers)

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "owned_by": "fastclip", "dim": self.dim,
                "modalities": self.modalities, "classify": self.clip is not None and self.clip.logit_scale is not None}

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.stop()
        for tower in (self.clip,) if self.clip is not None else (self.image, self.text):
            if tower is not None:
                tower.close()


def load_model(source: ModelSource, limits: Limits, metrics: Metrics, *, threads: int | None = None,
               precision: str | None = None, cache_dir: str | None = None, offline: bool = False) -> ServedModel:
    """Open the model's towers (both as one CLIP when the folder has both) and start their batchers."""
    if split_towers(source.source):  # a catalog model published as one repo per tower: each tower resolves its own
        clip = CLIP(source.source, cache_dir=cache_dir, local_files_only=offline, threads=threads, precision=precision)
        served = ServedModel(source.name, clip.images.folder, clip.dim, clip=clip)
        served.image, served.text = clip.images, clip.texts
        return _start(served, source, limits, metrics)
    folder = resolve_folder(source.source, cache_dir=cache_dir, local_files_only=offline)
    manifest = load_manifest(folder)
    options = {"threads": threads, "precision": precision, "manifest": manifest}
    served = ServedModel(source.name, folder, manifest.embed_dim)
    if manifest.vision is not None and manifest.text is not None:
        served.clip = CLIP(str(folder), **options)
        served.image, served.text = served.clip.images, served.clip.texts
    elif manifest.vision is not None:
        served.image = ImageEmbedding(str(folder), **options)
    elif manifest.text is not None:
        served.text = TextEmbedding(str(folder), **options)
    else:
        raise ModelError(f"{folder}: no tower to serve")
    return _start(served, source, limits, metrics)


def _start(served: ServedModel, source: ModelSource, limits: Limits, metrics: Metrics) -> ServedModel:
    """One batcher per tower the model holds."""
    if served.image is not None:
        image = served.image
        served.batchers["image"] = _batcher(source.name, "image", lambda items: image.embed_batch(items),
                                            limits.max_batch_images, limits.image_workers, limits, metrics)
    if served.text is not None:
        served.batchers["text"] = _batcher(source.name, "text", _text_runs(served.text, limits.max_batch_texts),
                                           limits.max_batch_texts, limits.text_workers, limits, metrics)
    return served


def _text_runs(text: TextEmbedding, max_batch: int):
    """The text batch call. A merged batch of one-text requests arrives in no order of length; asked for 8 runs
    of n/8 texts, embed_batch sorts them by length (less padding) and, from 8 runs on, runs them on its second,
    one-thread session side by side, as in-process `embed` does with its windows. Measured on ViT-B/32, 2 busy
    cores, the variants alternating batch by batch: 1.62x texts/s at 32 texts, 1.38x at 64, over one run per
    batch. Under 16 texts, and on a GPU (which wants one run), one run."""
    def run(items: list):
        n = len(items)
        rows = -(-n // 8) if n >= 16 and text.device == "cpu" else max_batch
        return text.embed_batch(items, batch_size=rows)

    return run


def _batcher(model: str, tower: str, run, max_batch: int, workers: int, limits: Limits, metrics: Metrics) -> Batcher:
    batcher = Batcher(f"{model}/{tower}", run, max_batch=max_batch, max_wait=limits.max_wait,
                      max_queue=limits.max_queue, workers=workers, on_batch=metrics.on_batch(model, tower))
    metrics.watch_queue(model, tower, lambda: batcher.queued)
    return batcher
