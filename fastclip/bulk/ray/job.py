"""The `fastclip embed --engine ray` job: inputs embedded on Ray, written as a resumable folder of Parquet
parts (fastclip.sinks.parts: the .parquet format plus an `index` column, the header in the schema
metadata); read it back with sinks.read_embeddings(DIR)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...defaults import IMAGE_BATCH, TEXT_BATCH
from ...errors import ImageError, TextError
from .callables import HUB_OPTIONS, ImageEmbedder, TextEmbedder
from .datasets import absolute_model, dataset, map_embedder
from .resources import import_ray


class EmbedSummary(dict):
    """rows (embedded), failed, done_before (inputs a resumed run found done), seconds (from submitting
    the job, once Ray is up: actor start included), files (Parquet parts written by this run)."""


def _job_header(kind: str, model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The header of the run, from the model as this machine opens it (the parts and a resume check it)."""
    from ...embedding import ImageEmbedding, TextEmbedding
    from ...sinks import make_header

    factory = ImageEmbedding if kind == "image" else TextEmbedding
    hub = {k: options[k] for k in (*HUB_OPTIONS, "precision", "language") if options.get(k) is not None}
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
    from ...sinks import PartsWriter
    from ...sinks.header import inputs_job

    model = absolute_model(model)
    header = _job_header(kind, model, options)
    options = dict(options, precision=header["precision"])  # the actors run the variant the header names
    key = "path" if kind == "image" else "text"
    with PartsWriter(out_dir, header, job=inputs_job(inputs), resume=resume) as writer:
        summary = EmbedSummary(rows=writer.rows, failed=writer.failed, done_before=len(writer.done), files=[],
                               seconds=0.0)
        todo = [i for i in range(len(inputs)) if i not in writer.done]
        if not todo:
            return summary
        ray = import_ray()
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
            ds = map_embedder(cls, dataset(inputs, kind, todo), model, batch_size or (IMAGE_BATCH if kind == "image" else TEXT_BATCH),
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
