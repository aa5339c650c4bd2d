"""A folder of Parquet parts, written as rows arrive in any order (what `fastclip embed --engine ray` writes).

    DIR/_fastclip_job.json          the run: header (model, fingerprint, options) and inputs (count, sha256)
    DIR/part-00000.parquet          the .parquet format plus a first column ``index`` (input index, int64),
                                    rows sorted by it; the header's rows/failed count this part
    DIR/_part-00000.errors.jsonl    the part's failed inputs, {"index", "path"|"text", "error"} per line
    DIR/_fastclip.lock              held (flock) by the run writing DIR, so that a second run is refused

Each part is encoded by the .parquet format inside a hidden work folder, fsynced, then renamed into place,
its errors file first: a part file present is a complete part, and a kill leaves whole parts only. A
resumed run reads the indices of the parts present and embeds the other inputs, so each input ends in
exactly one part. Every other name starts with "_" or ".", which Parquet dataset readers skip
(pyarrow.parquet.read_table, pandas.read_parquet, Ray, Spark), so DIR reads as a plain Parquet dataset too;
`read_embeddings(DIR)` gives the rows back in input order. A folder written before the lock took its
name kept it as DIR/lock, which those readers fail on: resuming it (even when finished) removes it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import OutputError
from .parquet import encode as encode_parquet, import_pyarrow, read as read_parquet
from .files import fault, lock_folder, publish, read_json, write_json_atomic, write_lines
from .formats import check_writable_folder, error_line
from .header import EmbeddingsFile, KINDS, dumps, finished, identity_mismatch, json_line, short

JOB = "_fastclip_job.json"
PARTS_FORMAT = "fastclip-parts"
PART = "part-{:05d}.parquet"
PART_ERRORS = "_part-{:05d}.errors.jsonl"
LOCK = "_fastclip.lock"
# What runs before this one named their lock: a file that Parquet readers take for a part
# ("Could not read schema from .../lock"). A resume takes it over and removes it.
OLD_LOCK = "lock"


class MemoryRows:
    """Rows held in memory, with their input indices (what the .parquet encoder reads)."""

    indexed = True
    vectors_file = None

    def __init__(self, key: str, dim: int, items: Sequence[str], vectors: np.ndarray, indices: np.ndarray):
        order = np.argsort(indices, kind="stable")
        self.key, self.dim, self.count = key, dim, len(items)
        self._items = [items[i] for i in order]
        self._vectors = np.asarray(vectors, np.float32)[order]
        self._indices = np.asarray(indices, np.int64)[order]

    def items(self) -> Iterator[str]:
        return iter(self._items)

    def item_lines(self) -> Iterator[str]:
        return (dumps({self.key: item}) for item in self._items)

    def chunks(self, size: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        for lo in range(0, self.count, size):
            yield self._items[lo : lo + size], self._vectors[lo : lo + size], self._indices[lo : lo + size]


def check_folder(folder: str | os.PathLike, *, resume: bool = False) -> Path:
    """Fail before any work when `folder` cannot take this run's parts: a file, not writable, parts of an
    earlier run without resume, or Parquet files that are not a fastclip run's. Creates it if missing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file; a Ray run writes a folder of Parquet parts")
    check_writable_folder(folder, probe_name=f".probe{os.getpid()}", what=str(folder))
    if (folder / JOB).exists():
        if not resume:
            raise OutputError(f"{folder} holds the parts of an earlier run: resume it (resume=True; "
                              f"fastclip embed --resume), or give an empty or new folder")
    elif any(folder.glob("*.parquet")):
        raise OutputError(f"{folder} already holds Parquet files from another run; give an empty or new folder")
    return folder


class PartsWriter:
    """Writes parts into `folder` for one run; with resume=True continues the run that left them.

    `done` is the set of input indices already in a part (embedded or failed) when it opens.
    """

    def __init__(self, folder: str | os.PathLike, header: dict, *, job: dict, resume: bool = False):
        self.folder = Path(folder)
        self.header, self.job = dict(header), dict(job)
        self.key, self.dim = KINDS[header["kind"]], int(header["dim"])
        check_folder(self.folder, resume=resume)
        self._lock = lock_folder(self.folder, str(self.folder), LOCK)
        try:
            _remove_old_lock(self.folder)
            self.done: set[int] = set()
            self.rows = self.failed = self.parts = 0
            if (self.folder / JOB).exists():
                self._recover()
            else:
                write_json_atomic(self.folder / JOB, {"format": PARTS_FORMAT, "version": 1, "header": self.header,
                                                      "job": self.job})
            for stale in self.folder.glob(".part-*.partial"):  # a part killed before its rename
                shutil.rmtree(stale, ignore_errors=True)
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        old = read_json(self.folder / JOB, "job file")
        if old.get("format") != PARTS_FORMAT:
            raise OutputError(f"{self.folder / JOB} is not a fastclip job file; give an empty or new folder")
        differs = identity_mismatch(old.get("header", {}), self.header)
        if differs is None and old.get("job") != self.job:
            differs = ("inputs", old.get("job"), self.job)
        if differs is not None:
            name, was, now = differs
            raise OutputError(f"cannot resume {self.folder}: the earlier run had {name} = {short(was)}, this run "
                              f"{short(now)}. Resume with the same inputs, model and options, or give a new folder")
        for number, path in _parts(self.folder):
            meta, indices, failed = _part_indices(path, number)
            self.done.update(indices)
            self.rows += meta["rows"]
            self.failed += len(failed)
            self.done.update(failed)
            self.parts = max(self.parts, number + 1)
        for orphan in self.folder.glob("_part-*.errors.jsonl"):  # its part never landed
            if not (self.folder / PART.format(_number(orphan))).exists():
                orphan.unlink()

    def write(self, items: Sequence[str], vectors: np.ndarray, indices: Sequence[int],
              failures: Sequence[tuple[int, str, str]] = ()) -> Path:
        """One part: rows (items[i] <-> vectors[i], input index indices[i]) and failed inputs (index, item,
        reason), sorted by input index, renamed into place once complete."""
        number = self.parts
        rows = MemoryRows(self.key, self.dim, items, vectors, np.asarray(indices, np.int64))
        work = self.folder / f".part-{number:05d}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        final = self.folder / PART.format(number)
        try:
            renames, _ = encode_parquet(rows, finished(self.header, rows.count, len(failures)), work, final)
            if failures:
                lines = (error_line(i, self.key, item, reason) for i, item, reason in sorted(failures))
                write_lines(work / "errors.jsonl", [], lines)
                renames.insert(0, ("errors.jsonl", PART_ERRORS.format(number)))  # the part last: it marks completion
            publish(work, renames, self.folder)
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from None
        shutil.rmtree(work, ignore_errors=True)
        fault(f"part-{number}")
        self.parts += 1
        self.rows += rows.count
        self.failed += len(failures)
        self.done.update(int(i) for i in indices)
        self.done.update(int(f[0]) for f in failures)
        return final

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "PartsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_old_lock(folder: Path) -> None:
    """Take the lock an earlier fastclip left under its old name (a run of that version still writing
    holds it: refused) and remove it, so that the folder reads as a plain Parquet dataset again."""
    if not (folder / OLD_LOCK).is_file():
        return
    old = lock_folder(folder, str(folder), OLD_LOCK)
    try:
        (folder / OLD_LOCK).unlink()
    finally:
        if old is not None:
            old.close()


def _number(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def _parts(folder: Path) -> list[tuple[int, Path]]:
    return sorted((_number(p), p) for p in folder.glob("part-*.parquet"))


def _part_errors(folder: Path, number: int) -> list[dict]:
    path = folder / PART_ERRORS.format(number)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        return [json_line(line, path, lineno) for lineno, line in enumerate(f, 1)]


def _part_indices(path: Path, number: int) -> tuple[dict, list[int], list[int]]:
    """(header, row indices, failed indices) of one part, reading only its index column."""
    _, pq = import_pyarrow()
    try:
        table = pq.read_table(path, columns=["index"])
        meta = json.loads(table.schema.metadata[b"fastclip"])
    except Exception as exc:  # noqa: BLE001 - pyarrow's own error types, or a part from elsewhere
        raise OutputError(f"{path}: not a readable part of this run ({exc}); move it away and resume") from None
    failed = [int(e["index"]) for e in _part_errors(path.parent, number)]
    return meta, table.column("index").to_pylist(), failed


def read_parts(folder: Path) -> EmbeddingsFile:
    """Every part of a finished run, rows in input order; an unfinished run is refused, naming what is missing."""
    job_file = folder / JOB
    if not job_file.exists():
        raise OutputError(f"{folder}: a folder, but not the output of a fastclip Ray run (no {JOB})")
    job = read_json(job_file, "job file")
    header = job.get("header", {})
    items: list[str] = []
    vectors, indices = [], []
    failed: list[int] = []
    created = None
    for number, path in _parts(folder):
        meta, part_items, part_vectors, part_indices = read_parquet(path)
        if identity_mismatch(meta, header) is not None or part_indices is None:
            raise OutputError(f"{path}: a part from another run (model, options or columns differ from {JOB})")
        items.extend(part_items)
        vectors.append(part_vectors)
        indices.append(part_indices)
        failed.extend(int(e["index"]) for e in _part_errors(folder, number))
        created = meta.get("created")
    index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    expected = int(job.get("job", {}).get("inputs", -1))
    covered = np.unique(np.concatenate([index, np.asarray(failed, np.int64)]))
    if len(covered) != len(index) + len(failed):
        raise OutputError(f"{folder}: an input appears in two parts (parts from two runs?); embed again")
    if len(covered) != expected:
        raise OutputError(f"{folder}: holds {len(covered)} of the run's {expected} inputs (an interrupted run: "
                          f"resume it with the same command and --resume)")
    order = np.argsort(index, kind="stable")
    dim = int(header["dim"])
    matrix = np.concatenate(vectors)[order] if vectors else np.zeros((0, dim), np.float32)
    meta = dict(finished(header, len(index), len(failed)), created=created)
    return EmbeddingsFile(vectors=matrix, items=[items[i] for i in order], meta=meta)
