"""Datasets in, lazy Datasets of vectors out: `embed_images` / `embed_texts` map the callables over a Ray
Dataset (or over paths and texts made into one) with the actor pool that plan_resources sizes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...defaults import IMAGE_BATCH, TEXT_BATCH
from .callables import ImageEmbedder, TextEmbedder
from .resources import import_ray, map_batches_kwargs, plan_resources


def _is_uri(path: str) -> bool:
    return "://" in path


def dataset(inputs: Any, kind: str, indices: list[int] | None = None):
    """A Dataset of the inputs: `text` rows, or `path` rows the actors open; with `indices`, only those
    inputs, each row carrying its input index in an `index` column."""
    ray = import_ray()
    if isinstance(inputs, ray.data.Dataset):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [os.fspath(p) if kind == "image" else p for p in inputs]
    if kind == "image":
        if indices is None and items and all(_is_uri(p) for p in items):
            # Cloud storage: read tasks fetch the bytes, the actors decode them with fastclip's own decoder.
            return ray.data.read_binary_files(items, include_paths=True)
        # Local (or shared-storage) files: the actors open them; a missing file is an error row, not a failed job.
        items = [p if _is_uri(p) else os.path.abspath(p) for p in items]
    key = "text" if kind == "text" else "path"
    if indices is None:
        return ray.data.from_items([{key: item} for item in items])
    return ray.data.from_items([{"index": i, key: items[i]} for i in indices])


def absolute_model(model: Any) -> Any:
    # A relative folder must not be looked up in each worker's own working folder.
    if model is not None and Path(str(model)).expanduser().is_dir():
        return str(Path(str(model)).expanduser().resolve())
    return model


def map_embedder(cls, ds, model, batch_size, concurrency, num_cpus, num_gpus, errors, options):
    """`ds.map_batches(cls, ...)` with the actor pool plan_resources gives (explicit arguments win); starts a
    local Ray if none is running."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init()
    plan = plan_resources(concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                          threads=options.get("threads"))
    options = dict(options, threads=plan["threads"])
    kwargs = map_batches_kwargs(plan["actors"])
    if plan["num_gpus"]:
        kwargs["num_gpus"] = plan["num_gpus"]
    return ds.map_batches(
        cls, fn_constructor_kwargs={"model": absolute_model(model), "errors": errors, **options},
        batch_size=batch_size, batch_format="numpy", num_cpus=plan["num_cpus"], **kwargs,
    )


def embed_images(
    paths_or_dataset: Any,
    model: Any = None,
    *,
    batch_size: int = IMAGE_BATCH,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    errors: str = "skip",
    **options: Any,
):
    """A lazy Ray Dataset of image vectors: the input's columns minus the payload, plus embedding and error.

    paths_or_dataset: a Ray Dataset (with a bytes, image or path column), or paths: local or shared-storage
    paths become a `path` column the actors open (a missing file is an error row); URIs (s3://, gs://, ...)
    go through ray.data.read_binary_files. Starts a local Ray if none is running. Resources follow
    plan_resources (no deadlock on small clusters) unless concurrency / num_cpus / num_gpus are given.
    options: every ImageEmbedder / ImageEmbedding option (precision, fast, exif_transpose, threads, ...).
    """
    return map_embedder(ImageEmbedder, dataset(paths_or_dataset, "image"), model, batch_size, concurrency, num_cpus,
                        num_gpus, errors, options)


def embed_texts(
    texts_or_dataset: Any,
    model: Any = None,
    *,
    batch_size: int = TEXT_BATCH,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    errors: str = "skip",
    **options: Any,
):
    """A lazy Ray Dataset of text vectors from a list of texts or a Dataset with a `text` column (see embed_images)."""
    if isinstance(texts_or_dataset, str):
        texts_or_dataset = [texts_or_dataset]
    return map_embedder(TextEmbedder, dataset(texts_or_dataset, "text"), model, batch_size, concurrency, num_cpus,
                        num_gpus, errors, options)
