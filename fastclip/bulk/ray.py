"""Ray Data integration: callable classes for `Dataset.map_batches`, helpers, and the `--engine ray` job.

    import ray
    from fastclip.ray import ImageEmbedder
    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    ds = ds.map_batches(ImageEmbedder, fn_constructor_kwargs={"model": "models/clip-b32"}, batch_size=32,
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)  # 2 x 1 CPU: needs >= 3 CPUs
    ds.write_parquet("s3://bucket/embeddings/")        # columns: path, embedding, error

Each actor loads the model once and runs `ImageEmbedding.embed_batch` / `TextEmbedding.embed_batch`, the
same batch-level call as the in-process loop, so the vectors are the in-process ones (max abs diff <= 1e-6).

Inputs (the first present column, or `column=`): images from `bytes` (read_binary_files; a `path` column
beside it names the row in errors), `image` (read_images: uint8 arrays Ray decoded itself; see README
"Scale out with Ray" for what that costs in exactness) or `path` (files the actors open themselves);
texts from `text`. Output: the input's columns minus the payload (`bytes` / `image`), plus `embedding`
(float32, the model's dim) and `error` ("" for good rows, the reason for a bad one, whose embedding is all
NaN so it can never pass for a vector). errors="raise" fails the job at the first bad input instead.

The callables take one batch format, Ray's default: a dict of numpy arrays in, a dict of numpy arrays out
(`embedding` becomes Ray's tensor column); Ray converts from and to its blocks. The `--engine ray` job
(embed_to_parquet) writes its parts with fastclip.sinks (the .parquet format plus an `index` column, the
header in the schema metadata) and resumes after a kill; read them back with sinks.read_embeddings(DIR).

Ray itself is imported lazily: `import fastclip` never needs it (the `ray` extra: `pip install ".[ray]"` in the checkout).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import ERRORS, IMAGE_BATCH, TEXT_BATCH
from ..errors import FastClipError, ImageError, ModelError, TextError
from ..hints import install_hint

__all__ = [
    "EmbedSummary",
    "ImageEmbedder",
    "TextEmbedder",
    "embed_images",
    "embed_texts",
    "embed_to_parquet",
    "map_batches_kwargs",
    "plan_resources",
]

IMAGE_COLUMNS = ("bytes", "image", "path")  # in order of preference when a batch has several
TEXT_COLUMNS = ("text",)
PAYLOADS = ("bytes", "image")  # dropped from the output: a dataset of embeddings should stay small
_HUB_OPTIONS = ("cache_dir", "local_files_only", "revision")
log = logging.getLogger("fastclip")


# ------------------------------------------------------------------------------------------- model


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
    hub = {k: options.pop(k) for k in _HUB_OPTIONS if k in options}
    model = str(model) if model is not None else factory.default_repo
    try:
        if options.get("specific_model_path") is None:
            from ..model import resolve_folder

            with _node_lock(model):
                options["specific_model_path"] = resolve_folder(model, tower=factory.tower_name, **hub)
        return factory(model, **options)
    except FastClipError as exc:
        raise ModelError(f"Ray node {_node()}, working folder {os.getcwd()}: {exc}. {_DISTRIBUTION_HINT}") from None


# ------------------------------------------------------------------------------------------ batches


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
        from ..embedding import ImageEmbedding

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
        from ..embedding import TextEmbedding

        return TextEmbedding

    def _error(self, i: int, exc: Any, item: Any, label: str | None) -> FastClipError:
        return TextError(i, f"{exc.reason}: {str(item)[:80]!r} (row {i} of its batch; {_HINT})")


# ---------------------------------------------------------------------------------------- resources


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise FastClipError(f"the Ray integration needs Ray Data: {install_hint('ray')}") from None
    return ray


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def map_batches_kwargs(actors: int) -> dict[str, Any]:
    """How this Ray asks for a fixed pool of `actors`: `compute=ActorPoolStrategy(size=n)` before 2.9 and
    again from 2.51 (where `concurrency` is deprecated), `concurrency=n` from 2.9 to 2.50 (where `compute`
    was the deprecated one)."""
    ray = _ray()
    version = _version(ray.__version__)
    if (2, 9) <= version < (2, 51):
        return {"concurrency": actors}
    return {"compute": ray.data.ActorPoolStrategy(size=actors)}


def plan_resources(
    *,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    threads: int | None = None,
    nodes: list[dict] | None = None,
) -> dict[str, Any]:
    """Actors, per-actor reservations and onnxruntime threads that run on the cluster without deadlock.

    Ray Data's read tasks need a free CPU each. Actors that reserve every CPU of every node leave none, and
    the job stalls with no error (measured: a 2-CPU local cluster with 2 actors of num_cpus=1). So, per node
    of C CPUs: n = max(1, C // threads) actors (threads: onnxruntime threads per actor, default min(4, C)),
    each reserving (C - 1) / n CPUs (at most `threads`), which keeps one CPU per node for reading. On a
    2-core machine: one actor, reserving 1 CPU, running onnxruntime on both cores. With num_gpus: one actor
    per GPU share, reserving 1 CPU (or less on small nodes). Explicit arguments win.
    Returns {"actors", "num_cpus", "num_gpus", "threads"}.
    """
    if nodes is None:
        ray = _ray()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sorted(float(n.get("Resources", {}).get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in nodes)
    smallest = next((c for c in cpus if c >= 1), 1.0)
    if threads is None:
        threads = max(1, min(4, int(smallest)))
    if num_gpus:
        if gpus <= 0:
            raise FastClipError(f"num_gpus={num_gpus} asked for, but the Ray cluster has no GPU")
        actors = concurrency or max(1, int(gpus // num_gpus))
        reserve = num_cpus if num_cpus is not None else min(1.0, max(smallest - 1, 0.25))
        return {"actors": actors, "num_cpus": reserve, "num_gpus": num_gpus, "threads": threads}
    per_node = [max(1, int(c // threads)) for c in cpus if c >= 1] or [1]
    actors = concurrency or sum(per_node)
    if num_cpus is None:
        # Rounded down to 1/100 CPU so a node never ends up with 0.999 free by float error.
        num_cpus = max(0.01, math.floor(min(float(threads), (smallest - 1) / min(per_node)) * 100) / 100)
    if actors * num_cpus > sum(cpus) - 1:
        log.warning("fastclip.ray: %d actors x num_cpus=%g reserve %g of the cluster's %g CPUs and may leave none "
                    "for Ray Data's read tasks (the job then stalls without an error); lower concurrency or num_cpus",
                    actors, num_cpus, actors * num_cpus, sum(cpus))
    return {"actors": actors, "num_cpus": num_cpus, "num_gpus": None, "threads": threads}


# ------------------------------------------------------------------------------------------ helpers


def _is_uri(path: str) -> bool:
    return "://" in path


def _dataset(inputs: Any, kind: str, indices: list[int] | None = None):
    """A Dataset of the inputs: `text` rows, or `path` rows the actors open; with `indices`, only those
    inputs, each row carrying its input index in an `index` column."""
    ray = _ray()
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


def _absolute_model(model: Any) -> Any:
    # A relative folder must not be looked up in each worker's own working folder.
    if model is not None and Path(str(model)).expanduser().is_dir():
        return str(Path(str(model)).expanduser().resolve())
    return model


def _map(cls, ds, model, batch_size, concurrency, num_cpus, num_gpus, errors, options):
    ray = _ray()
    if not ray.is_initialized():
        ray.init()
    plan = plan_resources(concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                          threads=options.get("threads"))
    options = dict(options, threads=plan["threads"])
    kwargs = map_batches_kwargs(plan["actors"])
    if plan["num_gpus"]:
        kwargs["num_gpus"] = plan["num_gpus"]
    return ds.map_batches(
        cls, fn_constructor_kwargs={"model": _absolute_model(model), "errors": errors, **options},
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
    return _map(ImageEmbedder, _dataset(paths_or_dataset, "image"), model, batch_size, concurrency, num_cpus,
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
    return _map(TextEmbedder, _dataset(texts_or_dataset, "text"), model, batch_size, concurrency, num_cpus,
                num_gpus, errors, options)


# -------------------------------------------------------------------------------------- CLI job


class EmbedSummary(dict):
    """rows (embedded), failed, done_before (inputs a resumed run found done), seconds (from submitting
    the job, once Ray is up: actor start included), files (Parquet parts written by this run)."""


def _job_header(kind: str, model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The header of the run, from the model as this machine opens it (the parts and a resume check it)."""
    from ..embedding import ImageEmbedding, TextEmbedding
    from ..sinks import make_header

    factory = ImageEmbedding if kind == "image" else TextEmbedding
    hub = {k: options[k] for k in (*_HUB_OPTIONS, "precision", "language") if options.get(k) is not None}
    with factory(model, threads=1, **hub) as local:
        recorded = {"engine": "ray", **{k: options[k] for k in ("fast", "exif_transpose", "language") if k in options}}
        return make_header(kind=kind, dim=local.dim, model=local.model_name, fingerprint=local.fingerprint,
                           precision=local.precision, options=recorded)


class _Gather:
    """Rows coming back from Ray in completion order, gathered into parts of `rows_per_file` inputs (or
    whatever arrived within `part_seconds`), so a kill loses at most one part in the making."""

    def __init__(self, writer: Any, rows_per_file: int, part_seconds: float):
        self.writer, self.rows_per_file, self.part_seconds = writer, rows_per_file, part_seconds
        self.files: list = []
        self._clear()

    def _clear(self) -> None:
        self.items: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.indices: list[int] = []
        self.failures: list[tuple[int, str, str]] = []
        self.since = time.monotonic()

    def add(self, batch: dict, key: str, *, failures: bool = True) -> list[tuple[int, str, str]]:
        """Gather one batch's rows (and its failures, unless failures=False); return its failures."""
        ok = batch["error"] == ""
        self.items.extend(str(batch[key][i]) for i in np.flatnonzero(ok))
        self.vectors.append(np.asarray(batch["embedding"], np.float32)[ok])
        self.indices.extend(int(i) for i in batch["index"][ok])
        failed = [(int(batch["index"][i]), str(batch[key][i]), str(batch["error"][i])) for i in np.flatnonzero(~ok)]
        if failures:
            self.failures.extend(failed)
        if len(self.indices) + len(self.failures) >= self.rows_per_file or \
                time.monotonic() - self.since >= self.part_seconds:
            self.flush()
        return failed

    def flush(self) -> None:
        if self.indices or self.failures:
            vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.writer.dim), np.float32)
            self.files.append(self.writer.write(self.items, vectors, self.indices, self.failures))
        self._clear()


def embed_to_parquet(
    inputs: list[str],
    out_dir: str | os.PathLike,
    model: Any = None,
    *,
    kind: str = "image",
    ray_address: str | None = None,
    errors: str = "skip",
    batch_size: int | None = None,
    resume: bool = False,
    rows_per_file: int = 100_000,
    part_seconds: float = 60.0,
    on_rows: Callable[[int], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    object_store_memory: int = 500 * 2**20,
    **options: Any,
) -> EmbedSummary:
    """Embed `inputs` (image paths or texts) on Ray into DIR/part-NNNNN.parquet (fastclip.sinks.parts: the
    .parquet format plus an `index` column), each part renamed into place when complete. The rows come back
    to this process, so the progress (on_rows(n)) and every failure (on_error(item, reason)) are reported
    here; errors="raise" stops at the first failure with its ImageError / TextError (the parts gathered so
    far are written first). resume=True continues a run that was killed: the inputs already in a part are
    not embedded again. Read the folder with fastclip.sinks.read_embeddings(DIR) (rows in input order).

    Connects to `ray_address` (e.g. "ray://head:10001" or "auto"), or starts a local Ray sized to this
    machine (object store capped at object_store_memory) and shuts it down at the end.
    """
    from ..sinks import PartsWriter
    from ..sinks.header import inputs_job

    model = _absolute_model(model)
    header = _job_header(kind, model, options)
    options = dict(options, precision=header["precision"])  # the actors run the variant the header names
    key = "path" if kind == "image" else "text"
    with PartsWriter(out_dir, header, job=inputs_job(inputs), resume=resume) as writer:
        summary = EmbedSummary(rows=writer.rows, failed=writer.failed, done_before=len(writer.done), files=[],
                               seconds=0.0)
        todo = [i for i in range(len(inputs)) if i not in writer.done]
        if not todo:
            return summary
        ray = _ray()
        started_here = False
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if ray_address:
                init["address"] = ray_address
            else:
                init["object_store_memory"] = object_store_memory
            ray.init(**init)
            started_here = True
        gather = _Gather(writer, rows_per_file, part_seconds)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr already
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per job stage otherwise
            cls = ImageEmbedder if kind == "image" else TextEmbedder
            ds = _map(cls, _dataset(inputs, kind, todo), model, batch_size or (IMAGE_BATCH if kind == "image" else TEXT_BATCH),
                      None, None, None, "skip", options)
            started = time.perf_counter()
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                failed = gather.add(batch, key, failures=errors == "skip")
                if failed and errors == "raise":
                    gather.flush()  # the good rows are kept; the failed input stays to do for a resume
                    index, item, reason = min(failed)
                    if kind == "image":
                        raise ImageError(index, item, reason)
                    raise TextError(index, f"{reason}: {item[:80]!r}")
                for _, item, reason in failed:
                    if on_error is not None:
                        on_error(item, reason)
                if on_rows is not None:
                    on_rows(len(batch["index"]))
            gather.flush()
            summary["seconds"] = time.perf_counter() - started
        finally:
            summary.update(rows=writer.rows, failed=writer.failed, files=gather.files)
            if started_here:
                ray.shutdown()
    return summary
