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

The batch format follows the input: numpy batches (Ray's default) come back as numpy (`embedding` becomes
Ray's tensor column: (n, dim) arrays in numpy batches); with batch_format="pyarrow" `embedding` is an
Arrow fixed_size_list<float32>[dim], which any Parquet reader understands, and the schema metadata key
`fastclip` records the model, its fingerprint, precision and options.

Ray itself is imported lazily: `import fastclip` never needs it (`pip install 'fastclip[ray]'`).
"""

from __future__ import annotations

import hashlib
import json
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

from ..errors import FastClipError, ImageError, ModelError, OutputError, TextError

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
ERRORS = ("skip", "raise")
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
                options["specific_model_path"] = resolve_folder(model, **hub)
        return factory(model, **options)
    except FastClipError as exc:
        raise ModelError(f"Ray node {_node()}, working folder {os.getcwd()}: {exc}. {_DISTRIBUTION_HINT}") from None


def _header(embedding: Any, kind: str, model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """What the schema metadata records (the keys of fastclip.sinks' header; rows/failed are per file)."""
    from ..manifest import tower_fingerprint
    from ..sinks import make_header

    keep = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool)) or v is None}
    header = make_header(kind=kind, dim=embedding.dim, model=str(model if model is not None else embedding.model_name),
                         fingerprint=tower_fingerprint(embedding.folder, embedding.spec),
                         precision=embedding.precision, options=keep)
    header["layout"] = "ray"  # columns path|text, embedding, error; failed inputs are rows with NaN vectors
    return header


# ------------------------------------------------------------------------------------------ batches


def _batch_kind(batch: Any) -> str:
    if isinstance(batch, dict):
        return "numpy"
    module = type(batch).__module__
    if module.startswith("pyarrow"):
        return "pyarrow"
    if module.startswith("pandas"):
        return "pandas"
    raise TypeError(f"fastclip.ray: expected a numpy, pandas or pyarrow batch, got {type(batch).__name__}")


def _columns(batch: Any, kind: str) -> list[str]:
    return list(batch.column_names) if kind == "pyarrow" else list(batch.keys() if kind == "numpy" else batch.columns)


def _column_values(batch: Any, kind: str, name: str) -> list[Any]:
    """One column as a list of Python values (bytes, str) or uint8 arrays (an `image` tensor column)."""
    if kind == "numpy":
        values = list(batch[name])
    elif kind == "pandas":
        values = list(batch[name].to_numpy())
    else:
        column = batch.column(name)
        if not isinstance(column.type, __import__("pyarrow").ExtensionType):
            return column.to_pylist()
        from ray.data.block import BlockAccessor  # Ray's tensor column (read_images)

        values = list(BlockAccessor.for_block(batch.select([name])).to_batch_format("numpy")[name])
    return [_unpad(v) for v in values] if name == "image" else values


def _unpad(image: Any) -> Any:
    # A read_images batch mixing gray (H, W) and color (H, W, 3) images comes back from Ray's
    # variable-shaped tensor column with the gray ones as (1, H, W) (measured, Ray 2.60).
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 1 and image.shape[2] not in (3, 4):
        return image[0]
    return image


def _output(batch: Any, kind: str, drop: str | None, vectors: np.ndarray, errors: list[str], header: dict) -> Any:
    if kind == "pyarrow":
        import pyarrow as pa

        table = batch.drop_columns([c for c in (drop, "embedding", "error") if c in batch.column_names])
        flat = pa.array(vectors.reshape(-1), pa.float32())
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
        table = table.append_column("error", pa.array(errors, pa.string()))
        meta = dict(table.schema.metadata or {})
        meta[b"fastclip"] = json.dumps(header, ensure_ascii=True).encode("ascii")
        return table.replace_schema_metadata(meta)
    names = [c for c in _columns(batch, kind) if c not in (drop, "embedding", "error")]
    out = {c: (batch[c] if kind == "numpy" else batch[c].to_numpy()) for c in names}
    out["embedding"] = vectors
    out["error"] = np.array(errors, dtype=object)
    return out


class _Embedder:
    kind = ""
    columns: tuple[str, ...] = ()

    def __init__(self, model: Any = None, *, errors: str = "skip", normalize: bool = True, column: str | None = None,
                 **options: Any):
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
        self.errors = errors
        self.normalize = normalize
        self.column = column
        self.model = open_on_node(self._factory(), model, options)
        self.dim = self.model.dim
        self.header = _header(self.model, self.kind, model, {**options, "normalize": normalize})

    def _pick(self, batch: Any, kind: str) -> str:
        present = _columns(batch, kind)
        if self.column is not None:
            if self.column not in present:
                raise ValueError(f"{type(self).__name__}: no column {self.column!r} in the batch (columns: {present})")
            return self.column
        for name in self.columns:
            if name in present:
                return name
        raise ValueError(f"{type(self).__name__} needs a column named one of {list(self.columns)} (or column=...); "
                         f"the batch has {present}")

    def __call__(self, batch: Any) -> Any:
        kind = _batch_kind(batch)
        name = self._pick(batch, kind)
        items = _column_values(batch, kind, name)
        labels = _column_values(batch, kind, "path") if name != "path" and "path" in _columns(batch, kind) else None
        vectors = np.full((len(items), self.dim), np.nan, dtype=np.float32)
        reasons = [""] * len(items)
        self._embed(items, labels, vectors, reasons)
        return _output(batch, kind, name if name in PAYLOADS else None, vectors, reasons, self.header)

    def __del__(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


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

    def _embed(self, items: list, labels: list | None, vectors: np.ndarray, reasons: list[str]) -> None:
        result = self.model.embed_batch(items, normalize=self.normalize)
        if result.failures and self.errors == "raise":
            i = min(result.failures)
            exc = result.failures[i]
            source = str(labels[i]) if labels is not None else exc.source
            raise ImageError(i, source, f"{exc.reason} (row {i} of its batch; errors='skip' records it in the "
                                        f"'error' column instead of failing the job)")
        vectors[result.ok] = result.vectors
        for i, exc in result.failures.items():
            reasons[i] = exc.reason


class TextEmbedder(_Embedder):
    """Ray Data callable class: text vectors for a `text` column (see ImageEmbedder for the arguments).

    fn_constructor_kwargs: model, errors, normalize, column, truncate (default True: texts longer than the
    context are cut as the reference tokenizers do; False: such a text is an error row), and every
    fastclip.TextEmbedding option (precision, threads, concurrent_runs, providers, cuda, ...).
    """

    kind = "text"
    columns = TEXT_COLUMNS

    def __init__(self, model: Any = None, *, truncate: bool = True, **kwargs: Any):
        self.truncate = truncate
        super().__init__(model, **kwargs)

    @staticmethod
    def _factory():
        from ..embedding import TextEmbedding

        return TextEmbedding

    def _embed(self, items: list, labels: list | None, vectors: np.ndarray, reasons: list[str]) -> None:
        good = []
        for i, text in enumerate(items):
            if isinstance(text, str):
                good.append(i)
            else:
                self._fail(i, text, f"not a string ({type(text).__name__})", reasons)
        try:
            vectors[good] = self._run([items[i] for i in good])
        except TextError:
            # Rare (truncate=False, or text the tokenizer refuses): find the culprits one by one.
            for i in good:
                try:
                    vectors[i] = self._run([items[i]])[0]
                except TextError as exc:
                    self._fail(i, items[i], exc.reason, reasons)

    def _run(self, texts: list[str]) -> np.ndarray:
        batch = self.model.embed_batch(texts, normalize=self.normalize, truncate=self.truncate,
                                       batch_size=max(1, len(texts)))
        if batch.failures:
            raise batch.first_failure()
        return batch.vectors

    def _fail(self, i: int, text: Any, reason: str, reasons: list[str]) -> None:
        if self.errors == "raise":
            raise TextError(i, f"{reason}: {str(text)[:80]!r} (row {i} of its batch; errors='skip' records it in "
                               f"the 'error' column instead of failing the job)")
        reasons[i] = reason


# ---------------------------------------------------------------------------------------- resources


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise FastClipError("the Ray integration needs Ray Data: pip install 'fastclip[ray]'") from None
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


def _dataset(inputs: Any, kind: str):
    ray = _ray()
    if isinstance(inputs, ray.data.Dataset):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [os.fspath(p) if kind == "image" else p for p in inputs]
    if kind == "text":
        return ray.data.from_items([{"text": t} for t in items])
    if items and all(_is_uri(p) for p in items):
        # Cloud storage: read tasks fetch the bytes, the actors decode them with fastclip's own decoder.
        return ray.data.read_binary_files(items, include_paths=True)
    # Local (or shared-storage) files: the actors open them; a missing file is an error row, not a failed job.
    return ray.data.from_items([{"path": os.path.abspath(p) if not _is_uri(p) else p} for p in items])


def _absolute_model(model: Any) -> Any:
    # A relative folder must not be looked up in each worker's own working folder.
    if model is not None and Path(str(model)).expanduser().is_dir():
        return str(Path(str(model)).expanduser().resolve())
    return model


def _embed(cls, kind, inputs, model, batch_size, concurrency, num_cpus, num_gpus, errors, batch_format, options):
    ray = _ray()
    if not ray.is_initialized():
        ray.init()
    ds = _dataset(inputs, kind)
    plan = plan_resources(concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                          threads=options.get("threads"))
    options = dict(options, threads=plan["threads"])
    kwargs = map_batches_kwargs(plan["actors"])
    if plan["num_gpus"]:
        kwargs["num_gpus"] = plan["num_gpus"]
    return ds.map_batches(
        cls, fn_constructor_kwargs={"model": _absolute_model(model), "errors": errors, **options},
        batch_size=batch_size, batch_format=batch_format, num_cpus=plan["num_cpus"], **kwargs,
    )


def embed_images(
    paths_or_dataset: Any,
    model: Any = None,
    *,
    batch_size: int = 32,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    errors: str = "skip",
    batch_format: str = "default",
    **options: Any,
):
    """A lazy Ray Dataset of image vectors: the input's columns minus the payload, plus embedding and error.

    paths_or_dataset: a Ray Dataset (with a bytes, image or path column), or paths: local or shared-storage
    paths become a `path` column the actors open (a missing file is an error row); URIs (s3://, gs://, ...)
    go through ray.data.read_binary_files. Starts a local Ray if none is running. Resources follow
    plan_resources (no deadlock on small clusters) unless concurrency / num_cpus / num_gpus are given.
    options: every ImageEmbedder / ImageEmbedding option (precision, fast, exif_transpose, threads, ...).
    """
    return _embed(ImageEmbedder, "image", paths_or_dataset, model, batch_size, concurrency, num_cpus, num_gpus,
                  errors, batch_format, options)


def embed_texts(
    texts_or_dataset: Any,
    model: Any = None,
    *,
    batch_size: int = 256,
    concurrency: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    errors: str = "skip",
    batch_format: str = "default",
    **options: Any,
):
    """A lazy Ray Dataset of text vectors from a list of texts or a Dataset with a `text` column (see embed_images)."""
    if isinstance(texts_or_dataset, str):
        texts_or_dataset = [texts_or_dataset]
    return _embed(TextEmbedder, "text", texts_or_dataset, model, batch_size, concurrency, num_cpus, num_gpus,
                  errors, batch_format, options)


# -------------------------------------------------------------------------------------- CLI job


class EmbedSummary(dict):
    """rows, embedded, failed, seconds (from submitting the job, once Ray is up: actor start included),
    files (Parquet parts written)."""


def _write_part(out_dir: Path, number: int, tables: list, header: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(tables)
    failed = sum(1 for e in table.column("error").to_pylist() if e)
    meta = dict(header, rows=table.num_rows, failed=failed)
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    table = table.replace_schema_metadata({"fastclip": json.dumps(meta, ensure_ascii=True)})
    final = out_dir / f"part-{number:05d}.parquet"
    tmp = out_dir / f".part-{number:05d}.parquet.tmp{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, final)  # a part is either complete or absent: a kill never leaves half a file
    return final


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """An output folder for Parquet parts: created if missing, refused when it already holds parts."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--engine ray writes a folder of Parquet files; {out} is a file (give a folder, e.g. {out.with_suffix('')}/)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from None
    if any(out.glob("*.parquet")):
        raise OutputError(f"{out} already holds Parquet files from another run; give an empty or new folder")
    return out


def embed_to_parquet(
    inputs: list[str],
    out_dir: str | os.PathLike,
    model: Any = None,
    *,
    kind: str = "image",
    ray_address: str | None = None,
    errors: str = "skip",
    batch_size: int | None = None,
    rows_per_file: int = 100_000,
    on_rows: Callable[[int], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    object_store_memory: int = 500 * 2**20,
    **options: Any,
) -> EmbedSummary:
    """Embed `inputs` (image paths or texts) on Ray and write DIR/part-NNNNN.parquet (path|text, embedding,
    error), each part renamed into place when complete. The rows come back to this process, so the progress
    (on_rows(n)) and every failure (on_error(item, reason)) are reported here; errors="raise" stops at the
    first failure with its ImageError / TextError (the parts already written stay).

    Connects to `ray_address` (e.g. "ray://head:10001" or "auto"), or starts a local Ray sized to this
    machine (object store capped at object_store_memory) and shuts it down at the end.
    """
    ray = _ray()
    out = check_out_dir(out_dir)
    started_here = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if ray_address:
            init["address"] = ray_address
        else:
            init["object_store_memory"] = object_store_memory
        ray.init(**init)
        started_here = True
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr already
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per job stage otherwise
        helper = embed_images if kind == "image" else embed_texts
        ds = helper(list(inputs), model, batch_size=batch_size or (32 if kind == "image" else 256),
                    errors="skip", batch_format="pyarrow", **options)
        key = "path" if kind == "image" else "text"
        summary = EmbedSummary(rows=0, failed=0, files=[], seconds=0.0)
        started = time.perf_counter()
        pending: list = []
        pending_rows = 0
        header: dict = {}
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if not header and table.schema.metadata and b"fastclip" in table.schema.metadata:
                header = json.loads(table.schema.metadata[b"fastclip"])
            for item, reason in zip(table.column(key).to_pylist(), table.column("error").to_pylist()):
                if reason:
                    summary["failed"] += 1
                    if errors == "raise":
                        if pending:
                            summary["files"].append(_write_part(out, len(summary["files"]), pending, header))
                        index = list(inputs).index(item)
                        if kind == "image":
                            raise ImageError(index, item, reason)
                        raise TextError(index, f"{reason}: {item[:80]!r}")
                    if on_error is not None:
                        on_error(item, reason)
            summary["rows"] += table.num_rows
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= rows_per_file:
                summary["files"].append(_write_part(out, len(summary["files"]), pending, header))
                pending, pending_rows = [], 0
            if on_rows is not None:
                on_rows(table.num_rows)
        if pending:
            summary["files"].append(_write_part(out, len(summary["files"]), pending, header))
        summary["seconds"] = time.perf_counter() - started
        summary["embedded"] = summary["rows"] - summary["failed"]
        return summary
    finally:
        if started_here:
            ray.shutdown()
