"""How a run survives a kill: the work folder, its journal, recovery, and the rename protocol.

Rows never go straight into OUT. A hidden work folder beside it, ``.OUT.partial/``, holds the job
description (``job.json``), an append-only float32 file (``vectors.npy``, whose header is rewritten in place
at the end) and a journal (``rows.jsonl``: row lines, failure lines, and after each batch a checkpoint line
``{"next": inputs done, "rows": rows so far}``). Both files are flushed to the OS after every batch, so a
killed process loses only the batch in flight, and fsynced every few seconds, so a machine crash loses only
those seconds. Resuming truncates both files to the last checkpoint whose rows are all in the vectors file
(a folder without any checkpoint holds no work and is started over). Finishing has the format's encoder
write the final files inside the work folder, records the renames still to do (``finalizing.json``), then
renames: a kill between two renames is completed by the next resume, and a reader meanwhile sees the .npy /
side-file mismatch through ``npy_sha256``. A previous OUT is replaced only by a complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import OutputError
from .npy import DTYPE, data_offset, npy_header
from .files import fault, lock_folder, publish, read_json, write_json_atomic, write_lines
from .formats import error_line, errors_path, format_of
from .header import KINDS, dumps, finished, identity_mismatch, short

JOURNAL_FORMAT = "fastclip-journal"
LOCK = "lock"  # inside the hidden work folder: no reader of OUT ever lists it
# A checkpoint is fsynced at most this often: flushing after every batch already survives kill -9;
# the fsync bounds what a power cut can take.
SYNC_SECONDS = 2.0


def partial_dir(out: str | os.PathLike) -> Path:
    """The hidden work folder of a run writing `out`."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def interrupted_run(out: str | os.PathLike) -> Path | None:
    """The work folder of an interrupted run writing `out` that holds work to resume, else None."""
    folder = partial_dir(out)
    return folder if _holds_work(folder) else None


def _holds_work(folder: Path) -> bool:
    # job.json is written before any row, and a checkpoint line after each batch's rows.
    if (folder / "finalizing.json").exists():
        return True
    try:
        return (folder / "job.json").exists() and (folder / "rows.jsonl").stat().st_size > 0
    except OSError:
        return False


class Rows:
    """The rows of the work folder, read back in chunks without holding the whole run (what encoders read)."""

    indexed = False  # no per-row input index: rows are in input order

    def __init__(self, folder: Path, key: str, dim: int, count: int):
        self.folder, self.key, self.dim, self.count = folder, key, dim, count
        self.vectors_file = folder / "vectors.npy"

    def _journal(self) -> Iterator[bytes]:
        with open(self.folder / "rows.jsonl", "rb") as f:
            yield from f

    def item_lines(self) -> Iterator[str]:
        prefix = f'{{"{self.key}"'.encode("ascii")
        for line in self._journal():
            if line.startswith(prefix):
                yield line.decode("ascii").rstrip("\n")

    def items(self) -> Iterator[str]:
        return (json.loads(line)[self.key] for line in self.item_lines())

    def chunks(self, size: int) -> Iterator[tuple[list[str], np.ndarray, None]]:
        items: list[str] = []
        with open(self.vectors_file, "rb") as vec:
            vec.seek(data_offset(self.dim))
            for item in self.items():
                items.append(item)
                if len(items) == size:
                    yield items, self._read(vec, len(items)), None
                    items = []
            if items:
                yield items, self._read(vec, len(items)), None

    def _read(self, f, n: int) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=DTYPE)
        if f.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OutputError(f"{self.folder}: vectors file shorter than its journal")
        return out

    def error_lines(self) -> Iterator[str]:
        for line in self._journal():
            if line.startswith(b'{"failed"'):
                rec = json.loads(line)
                yield error_line(rec["index"], self.key, rec[self.key], rec["failed"])


class EmbeddingsWriter:
    """Streams rows into `out` (.npy, .jsonl or .parquet) through a resumable work folder.

        with EmbeddingsWriter(out, header, job={"inputs_sha256": ..., "inputs": n}, resume=True) as w:
            for ...:                                     # start at input w.done
                w.write(items, vectors, failures=[(index, item, reason)], next_index=n)
            w.finish()                                   # atomic replace of OUT (and its side file)

    `job` identifies the inputs (any JSON dict); with resume=True an interrupted run of the same job,
    model fingerprint and options continues where its last checkpoint left it (`done` inputs, `rows`
    rows, `failed` failures), anything else is refused with OutputError. With resume=False an existing
    work folder is refused too (nothing finished is discarded silently). `finished` is True when the
    interrupted run had already written its final files: finish() only completes the renames.
    Leaving the block without finish() (an exception, Ctrl-C) keeps the work folder for a resume.
    """

    def __init__(self, out: str | os.PathLike, header: dict, *, job: dict | None = None, resume: bool = False):
        self.out = Path(out)
        self.format = format_of(self.out)
        self.header = dict(header)
        self.key = KINDS[self.header["kind"]]
        self.dim = int(self.header["dim"])
        self.job = dict(job or {})
        self.dir = partial_dir(self.out)
        self.done = self.rows = self.failed = 0
        self.finished = False
        self._closed = False
        self._vectors = self._journal = self._lock = None
        self._last_sync = time.monotonic()
        self._batches = 0  # write() calls in this process, for fault injection
        if not self.dir.exists():
            self._create()
            return
        self._lock = lock_folder(self.dir, str(self.out), LOCK)
        try:
            if not _holds_work(self.dir):
                # Killed while creating the folder, or before its first checkpoint: nothing to lose.
                self._release()
                shutil.rmtree(self.dir)
                self._create()
                return
            if not resume:
                raise OutputError(
                    f"a previous run writing {self.out} was interrupted: its finished work is in {self.dir}. "
                    f"Resume it (resume=True; fastclip embed --resume), or delete that folder to start over"
                )
            self._recover()
        except BaseException:
            self._release()
            raise

    # -- lifetime

    def _create(self) -> None:
        try:
            self.dir.mkdir()
        except FileExistsError:
            raise OutputError(f"another run is writing {self.out} (work folder {self.dir} appeared)") from None
        except OSError as exc:
            raise OutputError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        self._lock = lock_folder(self.dir, str(self.out), LOCK)
        with open(self.dir / "vectors.npy", "wb") as f:
            f.write(npy_header(0, self.dim))
        (self.dir / "rows.jsonl").touch()
        write_json_atomic(self.dir / "job.json", {
            "format": JOURNAL_FORMAT, "version": 1, "out": self.out.name, "header": self.header, "job": self.job,
        })
        self._open_files()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    def _open_files(self) -> None:
        self._vectors = open(self.dir / "vectors.npy", "r+b")
        self._vectors.seek(0, os.SEEK_END)
        self._journal = open(self.dir / "rows.jsonl", "ab")

    def __enter__(self) -> "EmbeddingsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Flush what was written and keep the work folder (resumable). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_files()
        self._release()

    def _close_files(self) -> None:
        for f in (self._vectors, self._journal):
            if f is not None and not f.closed:
                try:
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    f.close()

    # -- resume

    def _recover(self) -> None:
        job = read_json(self.dir / "job.json", "work folder (delete it to start over)")
        if job.get("format") != JOURNAL_FORMAT:
            raise OutputError(f"{self.dir} is not a fastclip work folder; move it away to write {self.out}")
        differs = identity_mismatch(job.get("header", {}), self.header)
        if differs is not None:
            raise OutputError(self._mismatch(*differs))
        if job.get("job") != self.job:
            raise OutputError(self._mismatch("inputs", job.get("job"), self.job))
        if (self.dir / "finalizing.json").exists():
            plan = read_json(self.dir / "finalizing.json", "finalizing.json (delete the folder to start over)")
            try:
                self.done, self.rows, self.failed = plan["done"], plan["header"]["rows"], plan["header"]["failed"]
            except (KeyError, TypeError) as exc:
                raise OutputError(f"{self.dir}: unreadable finalizing.json ({exc}); delete the folder to start over") from None
            self.finished = True
            return
        self._truncate_to_checkpoint()
        self._open_files()

    def _mismatch(self, what: str, old, new) -> str:
        return (
            f"cannot resume {self.out}: the interrupted run had {what} = {short(old)}, this run {short(new)}. "
            f"Resume with the same inputs, model and options, or delete {self.dir} to start over"
        )

    def _truncate_to_checkpoint(self) -> None:
        row_bytes = 4 * self.dim
        offset0 = data_offset(self.dim)
        vec_path, journal_path = self.dir / "vectors.npy", self.dir / "rows.jsonl"
        try:
            have = max(0, (vec_path.stat().st_size - offset0) // row_bytes)
            keep = done = rows = failed = 0
            pending_failed = 0
            offset = 0
            with open(journal_path, "rb") as f:
                for line in f:
                    offset += len(line)
                    if not line.endswith(b"\n"):
                        break  # the line being written when the run stopped
                    if line.startswith(b'{"next"'):
                        mark = json.loads(line)
                        if mark["rows"] > have:
                            break  # its vectors did not all reach the file
                        keep, done, rows = offset, mark["next"], mark["rows"]
                        failed += pending_failed
                        pending_failed = 0
                    elif line.startswith(b'{"failed"'):
                        pending_failed += 1
            with open(journal_path, "r+b") as f:
                f.truncate(keep)
            with open(vec_path, "r+b") as f:
                f.truncate(offset0 + rows * row_bytes)
        except (OSError, ValueError, KeyError) as exc:
            raise OutputError(f"{self.dir}: cannot read the interrupted run's journal ({exc}); delete it to start over") from None
        self.done, self.rows, self.failed = done, rows, failed

    # -- writing

    def write(
        self,
        items: Sequence[str],
        vectors: np.ndarray,
        *,
        failures: Iterable[tuple[int, str, str]] = (),
        next_index: int | None = None,
    ) -> None:
        """Append rows (items[i] <-> vectors[i]) and failed inputs (index, item, reason), then checkpoint:
        a resume restarts at `next_index` (default: done + rows + failures of this call). Call it once per
        batch, at input positions where restarting gives the same vectors (the same batch boundaries)."""
        if self._closed or self.finished:
            raise OutputError(f"{self.out}: writer already closed")
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape != (len(items), self.dim):
            raise ValueError(f"vectors must have shape ({len(items)}, {self.dim}), got {vectors.shape}")
        failures = list(failures)
        lines = [dumps({self.key: item}) for item in items]
        lines += [dumps({"failed": reason, "index": int(i), self.key: item}) for i, item, reason in failures]
        self.rows += len(items)
        self.failed += len(failures)
        self.done = self.done + len(items) + len(failures) if next_index is None else int(next_index)
        lines.append(dumps({"next": self.done, "rows": self.rows}))
        try:
            # Vectors first: a checkpoint line is only trusted when all of its rows are in the vectors file.
            self._vectors.write(vectors.tobytes())
            self._vectors.flush()
            self._batches += 1
            fault(f"vectors-{self._batches}")
            self._journal.write(("\n".join(lines) + "\n").encode("ascii"))
            self._journal.flush()
            fault(f"checkpoint-{self._batches}")
            if time.monotonic() - self._last_sync >= SYNC_SECONDS:
                os.fsync(self._vectors.fileno())
                os.fsync(self._journal.fileno())
                self._last_sync = time.monotonic()
        except OSError as exc:
            raise OutputError(f"cannot write to {self.dir}: {exc.strerror or exc}") from None

    # -- finishing

    def finish(self) -> dict:
        """Write the final file(s) and replace the previous output atomically; return the header."""
        if self._closed:
            raise OutputError(f"{self.out}: writer already closed")
        if self.finished:
            return self._complete_renames()
        self._close_files()
        rows = Rows(self.dir, self.key, self.dim, self.rows)
        try:
            renames, header = self.format.codec.encode(rows, finished(self.header, self.rows, self.failed),
                                                       self.dir, self.out)
            if self.failed:
                write_lines(self.dir / "errors.jsonl", [], rows.error_lines())
                renames.append(("errors.jsonl", errors_path(self.out).name))
            fault("finish-written")
            write_json_atomic(self.dir / "finalizing.json", {"renames": renames, "header": header, "done": self.done,
                                                             "remove_errors": not self.failed})
        except OSError as exc:
            raise OutputError(f"cannot write {self.out}: {exc.strerror or exc} (the finished work stays in {self.dir}; "
                              f"resume once fixed)") from None
        self.finished = True
        return self._complete_renames()

    def _complete_renames(self) -> dict:
        plan = read_json(self.dir / "finalizing.json", "finalizing.json (delete the folder to start over)")
        try:
            if plan["remove_errors"]:
                errors_path(self.out).unlink(missing_ok=True)
            publish(self.dir, plan["renames"], self.out.parent)
        except OSError as exc:
            raise OutputError(f"cannot replace {self.out}: {exc.strerror or exc} (resume to complete it)") from None
        self._release()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._closed = True
        return plan["header"]
