"""Ray Data callables for `Dataset.map_batches`: ImageEmbedder / TextEmbedder, one model per actor.

    import ray
    from fastclip.ray import ImageEmbedder
    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    ds = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": "models/clip-b32"}, batch_size=32,
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)  # 2 x 1 CPU: needs >= 3 CPUs
    ds.write_parquet("s3://bucket/embeddings/")        # columns: path, embedding, error

Each actor loads the model once (open_on_node: a hub repo resolved once per node) and runs
`ImageEmbedding.embed_batch` / `TextEmbedding.embed_batch`, the same batch-level call as the in-process
loop, so the vectors are the in-process ones (max abs diff <= 1e-6).

Inputs (the first present column, or `column=`): images from `bytes` (read_binary_files; a `path` column
beside it names the row in errors), `image` (read_images: uint8 arrays Ray decoded itself; see README
"Scale out with Ray" for what that costs in exactness) or `path` (files the actors open themselves);
texts from `text`. Output: the input's columns minus the payload (`bytes` / `image`), plus `embedding`
(float32, the model's dim) and `error` ("" for good rows, the reason for a bad one, whose embedding is all
NaN so it can never pass for a vector). errors="raise" fails the job at the first bad input instead.

The callables take one batch format, Ray's default: a dict of numpy arrays in, a dict of numpy arrays out
(`embedding` becomes Ray's tensor column); Ray converts from and to its blocks.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...defaults import ERRORS
from ...errors import FastClipError, ImageError, ModelError, TextError

IMAGE_COLUMNS = ("bytes", "image", "path")  # in order of preference when a batch has several
TEXT_COLUMNS = ("text",)
PAYLOADS = ("bytes", "image")  # dropped from the output: a dataset of embeddings should stay small
HUB_OPTIONS = ("cache_dir", "local_files_only", "revision")


def _node() -> str:
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label for a message: never fail over it
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


@contextmanager
def _node_lock(name: str) -> Iterator[None]:
    """One lock per model name per node: actors starting together resolve (download) a hub repo once."""
    try:
        import fcntl
    except ImportError:  # Windows: huggingface_hub's own per-file locks still keep the cache consistent
        yield
        return
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"fastclip-resolve-{digest}.lock"
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_DISTRIBUTION_HINT = (
    "every node must find the model: give a hub repo id (resolved and cached once per node), a folder at the "
    "same absolute path on every node (shared storage), or ship the folder with the job "
    "(ray.init(runtime_env={'working_dir': ...}) and a path relative to it)"
)


def open_on_node(factory: Callable[..., Any], model: Any, options: dict[str, Any]) -> Any:
    """factory(model, **options) on this node, resolving a hub repo once per node (file lock). A model that
    cannot be found here raises ModelError naming the node, its working folder and the fix."""
    options = dict(options)
    hub = {k: options.pop(k) for k in HUB_OPTIONS if k in options}
    model = str(model) if model is not None else factory.default_repo
    try:
        if options.get("specific_model_path") is None:
            from ...model import resolve_folder

            with _node_lock(model):
                options["specific_model_path"] = resolve_folder(model, tower=factory.tower_name, **hub)
        return factory(model, **options)
    except FastClipError as exc:
        raise ModelError(f"Ray node {_node()}, working folder {os.getcwd()}: {exc}. {_DISTRIBUTION_HINT}") from None


def _unpad(image: Any) -> Any:
    # A read_images batch mixing gray (H, W) and color (H, W, 3) images comes back from Ray's
    # variable-shaped tensor column with the gray ones as (1, H, W) (measured, Ray 2.60).
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 1 and image.shape[2] not in (3, 4):
        return image[0]
    return image


class _Embedder:
    """One Ray Data callable for both towers: a numpy batch (dict of arrays, Ray's default batch format)
    in, the same dict out minus the payload plus `embedding` and `error`; Ray converts to and from its
    blocks. One `embed_batch` call per batch, whose failures become error rows."""

    kind = ""
    columns: tuple[str, ...] = ()

    def __init__(self, model: Any = None, *, errors: str = "skip", normalize: bool = True, column: str | None = None,
                 **options: Any):
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
        self.errors = errors
        self.normalize = normalize
        self.column = column
        self.batch_options: dict[str, Any] = {}
        self.model = open_on_node(self._factory(), model, options)
        self.dim = self.model.dim

    def _pick(self, batch: dict) -> str:
        if self.column is not None:
            if self.column not in batch:
                raise ValueError(f"{type(self).__name__}: no column {self.column!r} in the batch (columns: {list(batch)})")
            return self.column
        for name in self.columns:
            if name in batch:
                return name
        raise ValueError(f"{type(self).__name__} needs a column named one of {list(self.columns)} (or column=...); "
                         f"the batch has {list(batch)}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(batch, dict):
            raise TypeError(f"{type(self).__name__} takes numpy batches (a dict of arrays: map_batches' default "
                            f"batch_format), got {type(batch).__name__}")
        name = self._pick(batch)
        items = [_unpad(v) for v in batch[name]] if name == "image" else list(batch[name])
        result = self.model.embed_batch(items, normalize=self.normalize, **self.batch_options)
        if result.failures and self.errors == "raise":
            i = min(result.failures)
            labels = batch.get("path") if name != "path" else None
            raise self._error(i, result.failures[i], items[i], None if labels is None else str(labels[i]))
        vectors = np.full((len(items), self.dim), np.nan, dtype=np.float32)  # NaN: never passes for a vector
        vectors[result.ok] = result.vectors
        reasons = np.full(len(items), "", dtype=object)
        for i, exc in result.failures.items():
            reasons[i] = exc.reason
        out = {c: v for c, v in batch.items() if c not in ("embedding", "error") and not (c == name and c in PAYLOADS)}
        out["embedding"] = vectors
        out["error"] = reasons
        return out

    def __del__(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


_HINT = "errors='skip' records it in the 'error' column instead of failing the job"


class ImageEmbedder(_Embedder):
    """Ray Data callable class: image vectors for each row (see the module doc for columns).

    map_batches(ImageEmbedder, fn_constructor_kwargs={"model": M, ...}, batch_size=32,
                compute=ray.data.ActorPoolStrategy(size=N), num_cpus=..., num_gpus=...)

    fn_constructor_kwargs: model (folder or hub repo id; default fastclip's ViT-B/32), errors ("skip":
    a bad image is an error row; "raise": the job fails naming it), normalize, column (which input column),
    and every fastclip.ImageEmbedding option: precision, fast, exif_transpose, threads, workers, providers,
    cuda, device_ids, cache_dir, local_files_only, revision, verify, tuning. With num_gpus=1 Ray gives each
    actor its GPU and onnxruntime uses it when it really works (cuda=True to require it).
    """

    kind = "image"
    columns = IMAGE_COLUMNS

    @staticmethod
    def _factory():
        from ...embedding import ImageEmbedding

        return ImageEmbedding

    def _error(self, i: int, exc: Any, item: Any, label: str | None) -> FastClipError:
        return ImageError(i, label or exc.source, f"{exc.reason} (row {i} of its batch; {_HINT})")


class TextEmbedder(_Embedder):
    """Ray Data callable class: text vectors for a `text` column (see ImageEmbedder for the arguments).

    fn_constructor_kwargs: model, errors, normalize, column, truncate (default True: texts longer than the
    context are cut as the reference tokenizers do; False: such a text is an error row), and every
    fastclip.TextEmbedding option (precision, threads, concurrent_runs, providers, cuda, ...).
    """

    kind = "text"
    columns = TEXT_COLUMNS

    def __init__(self, model: Any = None, *, truncate: bool = True, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.batch_options = {"truncate": truncate}

    @staticmethod
    def _factory():
        from ...embedding import TextEmbedding

        return TextEmbedding

    def _error(self, i: int, exc: Any, item: Any, label: str | None) -> FastClipError:
        return TextError(i, f"{exc.reason}: {str(item)[:80]!r} (row {i} of its batch; {_HINT})")
