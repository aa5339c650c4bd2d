"""Embeddings files: the writers (streaming, atomic, resumable) and the reader, for .npy, .jsonl and .parquet.

One module for every producer (the `fastclip embed` command, bulk jobs, Ray) and every consumer (search,
evaluation). What is on disk (the contract in docs: README "Bulk jobs: streaming, resume, output files"):

* ``OUT.npy``: float32 (rows, dim), one row per embedded input, in input order. Side file ``OUT.npy.jsonl``:
  line 1 the header (below) plus ``"npy_sha256"`` (sha256 of OUT.npy's bytes, so a reader notices an .npy
  and a side file from different runs), then one ``{"path": ...}`` or ``{"text": ...}`` per row.
* ``OUT.jsonl``: line 1 ``{"fastclip_embeddings": <header>}``, then ``{"path"|"text": ..., "vector": [...]}``.
* ``OUT.parquet``: columns ``path`` or ``text`` (string) and ``vector`` (fixed_size_list<float32>[dim]), the
  header as JSON in the schema metadata under the key ``fastclip``. Parquet strings must be valid UTF-8, so
  when any name is not, a binary column ``path_bytes`` (``text_bytes``) holds the exact bytes of those rows
  (null for the others) and ``path`` shows them with U+FFFD in place of the bad bytes.
* ``OUT.<suffix>.errors.jsonl`` (e.g. ``vectors.npy.errors.jsonl``; only when some inputs failed):
  ``{"index": i, "path": ..., "error": "..."}`` per failed input. Failed inputs are not rows; the header's
  ``"failed"`` counts them. A finished run without failures removes a stale errors file.

Exact names: JSON is written with ensure_ascii=True. A name whose bytes are not UTF-8 travels as Python's
surrogateescape str (``"caf\\udce9.jpg"``), which JSON escapes as ``"\\udce9"``; ``os.fsencode(item)`` (or
``item.encode("utf-8", "surrogateescape")``) gives the original bytes back. Newlines are escaped by JSON, so
one row is always one line.

Header (``meta``), the same keys in every format::

    {"format": "fastclip-embeddings", "version": 1, "kind": "image"|"text", "dim": D, "rows": N,
     "model": ..., "fingerprint": ..., "precision": "fp32", "normalized": true, "options": {...},
     "failed": F, "created": "<UTC ISO time>", "fastclip": "<version>"}

How a run survives a kill: rows never go straight into OUT. A hidden work folder beside it,
``.OUT.partial/``, holds the job description (``job.json``), an append-only float32 file (``vectors.npy``,
whose header is fixed-width and rewritten at the end) and a journal (``rows.jsonl``: row lines, failure
lines, and after each batch a checkpoint line ``{"next": inputs done, "rows": rows so far}``). Both files are
flushed to the OS after every batch, so a killed process loses only the batch in flight, and fsynced every
few seconds, so a machine crash loses only those seconds. Resuming truncates both files to the last
checkpoint whose rows are all in the vectors file. Finishing writes the final files inside the work folder,
records the renames still to do (``finalizing.json``), then renames: a kill between two renames is
completed by the next resume, and a reader meanwhile sees the .npy / side-file mismatch through
``npy_sha256``. A previous OUT is replaced only by a complete new one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import OutputError

FORMAT = "fastclip-embeddings"
VERSION = 1
SUFFIXES = (".npy", ".jsonl", ".parquet")
KINDS = {"image": "path", "text": "text"}  # kind -> the key naming each row's input
JOURNAL_FORMAT = "fastclip-journal"
# A checkpoint is fsynced at most this often: flushing after every batch already survives kill -9;
# the fsync bounds what a power cut can take.
SYNC_SECONDS = 2.0
_NPY_HEADER = 128  # fixed-width header of the work folder's vectors.npy, rewritten in place at the end
_COPY_BLOCK = 1 << 22
_PARQUET_ROWS = 16384  # rows per Parquet row group (~32 MB at 512-d)


@dataclass(frozen=True)
class EmbeddingsFile:
    """A fastclip embeddings file read back: vectors[i] belongs to items[i]."""

    vectors: np.ndarray  # (N, D) float32; opened with mmap_mode="r" for .npy when mmap=True
    items: list[str]  # per row: the image path (kind "image") or the text (kind "text"), exact
    meta: dict  # the header

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def _version() -> str:
    from . import __version__

    return __version__


def make_header(
    *,
    kind: str,
    dim: int,
    model: str,
    fingerprint: str,
    precision: str,
    normalized: bool = True,
    options: dict | None = None,
) -> dict[str, Any]:
    """The header of a new file; `rows`, `failed` and `created` are filled in when it is finished."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return {
        "format": FORMAT, "version": VERSION, "kind": kind, "dim": int(dim), "rows": 0, "model": str(model),
        "fingerprint": fingerprint, "precision": precision, "normalized": bool(normalized),
        "options": dict(options or {}), "failed": 0, "created": None, "fastclip": _version(),
    }


def _dumps(obj: Any) -> str:
    # ensure_ascii: lone surrogates (non-UTF-8 names) become "\udcXX", so every line is plain ASCII.
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def exact_bytes(item: str) -> bytes:
    """The original bytes of a name read back from an embeddings file (inverse of surrogateescape)."""
    return item.encode("utf-8", "surrogateescape")


def _is_utf8(item: str) -> bool:
    try:
        item.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def partial_dir(out: str | os.PathLike) -> Path:
    """The hidden work folder of a run writing `out`."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def output_files(out: str | os.PathLike) -> list[Path]:
    """Every file a finished run leaves for `out` (the side file for .npy, the errors file if any)."""
    out = Path(out)
    files = [out]
    if out.suffix.lower() == ".npy":
        files.append(out.with_name(out.name + ".jsonl"))
    files.append(errors_path(out))
    return files


def errors_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".errors.jsonl")


def check_output(out: str | os.PathLike) -> Path:
    """Fail before any work when `out` cannot be written: wrong suffix, a directory, a parent that cannot
    be created, or a folder we may not write in. Creates the missing parent folders."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise OutputError(f"--out must end in one of {', '.join(SUFFIXES)} (got {out.name!r})")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise OutputError("writing .parquet needs pyarrow: pip install 'fastclip[parquet]'") from None
    for path in output_files(out):
        if path.is_dir():
            raise OutputError(f"{path} is a directory; --out needs a file name such as {path / ('vectors' + out.suffix)}")
        if path.exists() and not path.is_file():
            raise OutputError(f"{path} exists and is not a regular file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder for {out}: {exc.strerror or exc}") from None
    probe = out.with_name(f".{out.name}.probe{os.getpid()}")
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
    return out


# ---------------------------------------------------------------------------------------------- writer


def _npy_header(rows: int, dim: int) -> bytes:
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    body = text.ljust(_NPY_HEADER - 10 - 1) + "\n"
    out = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")
    assert len(out) == _NPY_HEADER
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform (Windows); rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(_dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fault(step: str) -> None:
    """Fault injection for the kill tests: FASTCLIP_FAULT=<step> kills this process (SIGKILL) at `step`."""
    if os.environ.get("FASTCLIP_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


# The header fields that decide the vectors: a run may only be resumed by one that agrees on all of them.
_IDENTITY = ("kind", "dim", "fingerprint", "precision", "normalized", "options")


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
        self.suffix = self.out.suffix.lower()
        if self.suffix not in SUFFIXES:
            raise OutputError(f"{self.out}: unknown output format (use one of {', '.join(SUFFIXES)})")
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
        if self.dir.exists():
            self._lock_dir()
            if not resume:
                self._release()
                raise OutputError(
                    f"a previous run writing {self.out} was interrupted: its finished work is in {self.dir}. "
                    f"Pass --resume (resume=True) to continue it, or delete that folder to start over"
                )
            self._recover()
        else:
            self._create()

    # -- lifetime

    def _create(self) -> None:
        try:
            self.dir.mkdir()
        except FileExistsError:
            raise OutputError(f"another run is writing {self.out} (work folder {self.dir} appeared)") from None
        except OSError as exc:
            raise OutputError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        self._lock_dir()
        with open(self.dir / "vectors.npy", "wb") as f:
            f.write(_npy_header(0, self.dim))
        (self.dir / "rows.jsonl").touch()
        _write_json_atomic(self.dir / "job.json", {
            "format": JOURNAL_FORMAT, "version": 1, "out": self.out.name, "header": self.header, "job": self.job,
        })
        self._open_files()

    def _lock_dir(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; two runs on one OUT are the user's problem there
            return
        self._lock = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise OutputError(f"another fastclip run is writing {self.out} right now (it holds {self.dir})") from None

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
        try:
            job = json.loads((self.dir / "job.json").read_text(encoding="ascii"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self.dir}: unreadable work folder ({exc}); delete it to start over") from None
        if job.get("format") != JOURNAL_FORMAT:
            raise OutputError(f"{self.dir} is not a fastclip work folder; move it away to write {self.out}")
        old = job.get("header", {})
        for name in _IDENTITY:
            if old.get(name) != self.header.get(name):
                raise OutputError(self._mismatch(name, old.get(name), self.header.get(name)))
        if job.get("job") != self.job:
            raise OutputError(self._mismatch("inputs", job.get("job"), self.job))
        if (self.dir / "finalizing.json").exists():
            try:
                plan = json.loads((self.dir / "finalizing.json").read_text(encoding="ascii"))
                self.done, self.rows, self.failed = plan["done"], plan["header"]["rows"], plan["header"]["failed"]
            except (OSError, ValueError, KeyError) as exc:
                raise OutputError(f"{self.dir}: unreadable finalizing.json ({exc}); delete the folder to start over") from None
            self.finished = True
            return
        self._truncate_to_checkpoint()
        self._open_files()

    def _mismatch(self, what: str, old: Any, new: Any) -> str:
        return (
            f"cannot resume {self.out}: the interrupted run had {what} = {_short(old)}, this run {_short(new)}. "
            f"Resume with the same inputs, model and options, or delete {self.dir} to start over"
        )

    def _truncate_to_checkpoint(self) -> None:
        row_bytes = 4 * self.dim
        vec_path, journal_path = self.dir / "vectors.npy", self.dir / "rows.jsonl"
        try:
            have = max(0, (vec_path.stat().st_size - _NPY_HEADER) // row_bytes)
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
                f.truncate(_NPY_HEADER + rows * row_bytes)
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
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape != (len(items), self.dim):
            raise ValueError(f"vectors must have shape ({len(items)}, {self.dim}), got {vectors.shape}")
        failures = list(failures)
        lines = [_dumps({self.key: item}) for item in items]
        lines += [_dumps({"failed": reason, "index": int(i), self.key: item}) for i, item, reason in failures]
        self.rows += len(items)
        self.failed += len(failures)
        self.done = self.done + len(items) + len(failures) if next_index is None else int(next_index)
        lines.append(_dumps({"next": self.done, "rows": self.rows}))
        try:
            # Vectors first: a checkpoint line is only trusted when all of its rows are in the vectors file.
            self._vectors.write(vectors.tobytes())
            self._vectors.flush()
            self._journal.write(("\n".join(lines) + "\n").encode("ascii"))
            self._journal.flush()
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
        header = dict(self.header, rows=self.rows, failed=self.failed)
        header["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        renames: list[tuple[str, str]] = []
        try:
            if self.suffix == ".npy":
                side = self.out.with_name(self.out.name + ".jsonl")
                header["npy_sha256"] = self._finish_npy()
                _fault("finish-npy")
                self._write_lines("side.jsonl", [_dumps(header)], self._row_lines())
                renames += [("side.jsonl", side.name), ("vectors.npy", self.out.name)]
            elif self.suffix == ".jsonl":
                self._write_lines("final.jsonl", [_dumps({"fastclip_embeddings": header})], self._jsonl_rows())
                renames.append(("final.jsonl", self.out.name))
            else:
                self._write_parquet("final.parquet", header)
                renames.append(("final.parquet", self.out.name))
            if self.failed:
                self._write_lines("errors.jsonl", [], self._error_lines())
                renames.append(("errors.jsonl", errors_path(self.out).name))
            _fault("finish-written")
            _write_json_atomic(self.dir / "finalizing.json", {"renames": renames, "header": header, "done": self.done,
                                                              "remove_errors": not self.failed})
        except OSError as exc:
            raise OutputError(f"cannot write {self.out}: {exc.strerror or exc} (the finished work stays in {self.dir}; "
                              f"rerun with --resume once fixed)") from None
        self.finished = True
        return self._complete_renames()

    def _complete_renames(self) -> dict:
        plan = json.loads((self.dir / "finalizing.json").read_text(encoding="ascii"))
        try:
            if plan["remove_errors"]:
                errors_path(self.out).unlink(missing_ok=True)
            for step, (src, dest) in enumerate(plan["renames"]):
                if (self.dir / src).exists():  # else an earlier, interrupted finish already moved it
                    os.replace(self.dir / src, self.out.with_name(dest))
                    _fault(f"rename-{step}")
            _fsync_dir(self.out.parent)
        except OSError as exc:
            raise OutputError(f"cannot replace {self.out}: {exc.strerror or exc} (rerun with --resume)") from None
        self._release()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._closed = True
        return plan["header"]

    def _journal_lines(self) -> Iterator[bytes]:
        with open(self.dir / "rows.jsonl", "rb") as f:
            yield from f

    def _row_lines(self) -> Iterator[str]:
        prefix = f'{{"{self.key}"'.encode("ascii")
        for line in self._journal_lines():
            if line.startswith(prefix):
                yield line.decode("ascii").rstrip("\n")

    def _rows(self, chunk: int = 1024) -> Iterator[tuple[list[str], np.ndarray]]:
        """(items, vectors) in chunks, read back from the work folder without holding the whole run."""
        items: list[str] = []
        with open(self.dir / "vectors.npy", "rb") as vec:
            vec.seek(_NPY_HEADER)
            for line in self._row_lines():
                items.append(json.loads(line)[self.key])
                if len(items) == chunk:
                    yield items, self._read_vectors(vec, len(items))
                    items = []
            if items:
                yield items, self._read_vectors(vec, len(items))

    def _read_vectors(self, f, n: int) -> np.ndarray:
        out = np.empty((n, self.dim), dtype="<f4")
        if f.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OutputError(f"{self.dir}: vectors file shorter than its journal")
        return out

    def _jsonl_rows(self) -> Iterator[str]:
        for items, vectors in self._rows():
            for item, vector in zip(items, vectors):
                # float32 -> Python float is exact and repr round-trips, so reading back gives the same bits.
                yield _dumps({self.key: item, "vector": vector.tolist()})

    def _error_lines(self) -> Iterator[str]:
        for line in self._journal_lines():
            if line.startswith(b'{"failed"'):
                rec = json.loads(line)
                yield _dumps({"index": rec["index"], self.key: rec[self.key], "error": rec["failed"]})

    def _write_lines(self, name: str, head: list[str], lines: Iterable[str]) -> None:
        with open(self.dir / name, "w", encoding="ascii", newline="\n") as f:
            for line in head:
                f.write(line + "\n")
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _finish_npy(self) -> str:
        path = self.dir / "vectors.npy"
        with open(path, "r+b") as f:
            f.truncate(_NPY_HEADER + self.rows * 4 * self.dim)
            f.seek(0)
            f.write(_npy_header(self.rows, self.dim))
            f.flush()
            os.fsync(f.fileno())
        return _sha256(path)

    def _write_parquet(self, name: str, header: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Parquet strings must be UTF-8: one pass over the journal decides whether a bytes column is needed.
        exact = any(not _is_utf8(json.loads(line)[self.key]) for line in self._row_lines())
        fields = [pa.field(self.key, pa.string()), pa.field("vector", pa.list_(pa.float32(), self.dim))]
        if exact:
            fields.append(pa.field(f"{self.key}_bytes", pa.binary()))
        schema = pa.schema(fields, metadata={"fastclip": json.dumps(header, ensure_ascii=True)})
        with pq.ParquetWriter(self.dir / name, schema) as writer:
            for items, vectors in self._rows(_PARQUET_ROWS):
                flat = pa.array(vectors.reshape(-1), pa.float32())
                columns = [
                    pa.array([exact_bytes(i).decode("utf-8", "replace") for i in items], pa.string()),
                    pa.FixedSizeListArray.from_arrays(flat, self.dim),
                ]
                if exact:
                    columns.append(pa.array([None if _is_utf8(i) else exact_bytes(i) for i in items], pa.binary()))
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        with open(self.dir / name, "rb+") as f:
            os.fsync(f.fileno())


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- reader


def read_embeddings(path: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> EmbeddingsFile:
    """Read a file written by `fastclip embed` or an EmbeddingsWriter: .npy (+ its side file), .jsonl, .parquet.

    Raises OutputError when the file is not a fastclip embeddings file, is unreadable, or an .npy and its
    side file do not belong together (rows, dim or sha256 differ: an interrupted or mixed-up write).
    verify=False skips hashing the .npy (rows and dim are still checked); mmap=False loads it into memory.
    Passing the side file (OUT.npy.jsonl) reads OUT.npy.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _read_npy(path, mmap=mmap, verify=verify)
        if suffix == ".jsonl":
            return _read_jsonl(path, mmap=mmap, verify=verify)
        if suffix == ".parquet":
            return _read_parquet(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    raise OutputError(f"{path}: not an embeddings file (expected .npy, .jsonl or .parquet)")


def _check_header(meta: Any, where: Path) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OutputError(f"{where}: not a fastclip embeddings file (no {FORMAT!r} header)")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise OutputError(f"{where}: embeddings format version {meta.get('version')!r} is newer than this "
                          f"fastclip reads ({VERSION}); upgrade fastclip")
    if meta.get("kind") not in KINDS or not isinstance(meta.get("dim"), int) or not isinstance(meta.get("rows"), int):
        raise OutputError(f"{where}: malformed header (kind, dim, rows)")
    return meta


def _json_line(line: bytes, where: Path, lineno: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise OutputError(f"{where}:{lineno}: not a JSON line ({exc}); the file is truncated or corrupt") from None


def _read_items(f, key: str, where: Path, first_lineno: int = 2) -> list[str]:
    items = []
    for lineno, line in enumerate(f, first_lineno):
        rec = _json_line(line, where, lineno)
        if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
            raise OutputError(f"{where}:{lineno}: expected a {{\"{key}\": ...}} row")
        items.append(rec[key])
    return items


def _read_npy(path: Path, *, mmap: bool, verify: bool) -> EmbeddingsFile:
    side = path.with_name(path.name + ".jsonl")
    if not side.exists():
        old = path.with_name(path.name + ".paths.txt")
        hint = f" ({old.name} is from fastclip 0.1, which did not record names exactly: embed again)" if old.exists() else ""
        raise OutputError(f"{path}: no side file {side.name}, so the rows cannot be matched to inputs{hint}")
    with open(side, "rb") as f:
        meta = _check_header(_json_line(f.readline(), side, 1), side)
        items = _read_items(f, KINDS[meta["kind"]], side)
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise OutputError(f"{path}: not a readable .npy ({exc})") from None
    where = f"{path} and {side.name} do not belong together"
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise OutputError(f"{path}: expected a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
    if vectors.shape != (meta["rows"], meta["dim"]) or len(items) != meta["rows"]:
        raise OutputError(f"{where}: the .npy has shape {vectors.shape}, the side file lists {len(items)} rows of "
                          f"dim {meta['dim']} (an interrupted or mixed-up write; embed again or --resume)")
    if verify and meta.get("npy_sha256") != _sha256(path):
        raise OutputError(f"{where}: the .npy's sha256 is not the one the side file records (files from "
                          f"different runs, or a write was interrupted; embed again or --resume)")
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)


def _read_jsonl(path: Path, *, mmap: bool, verify: bool) -> EmbeddingsFile:
    with open(path, "rb") as f:
        first = _json_line(f.readline(), path, 1)
        if isinstance(first, dict) and first.get("format") == FORMAT and "npy_sha256" in first \
                and path.name.lower().endswith(".npy.jsonl"):
            return _read_npy(path.with_name(path.name[: -len(".jsonl")]), mmap=mmap, verify=verify)
        meta = _check_header(first.get("fastclip_embeddings") if isinstance(first, dict) else None, path)
        key, dim = KINDS[meta["kind"]], meta["dim"]
        vectors = np.empty((meta["rows"], dim), np.float32)
        items = []
        for lineno, line in enumerate(f, 2):
            rec = _json_line(line, path, lineno)
            n = len(items)
            if n >= meta["rows"]:
                raise OutputError(f"{path}: more rows than the header's {meta['rows']}")
            try:
                vectors[n] = rec["vector"]
                items.append(rec[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise OutputError(f"{path}:{lineno}: malformed row ({type(exc).__name__}: {exc})") from None
    if len(items) != meta["rows"]:
        raise OutputError(f"{path}: {len(items)} rows, the header says {meta['rows']} (truncated file)")
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)


def _read_parquet(path: Path) -> EmbeddingsFile:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("reading .parquet needs pyarrow: pip install 'fastclip[parquet]'") from None
    try:
        table = pq.read_table(path)
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/ArrowIOError types
        raise OutputError(f"{path}: not a readable Parquet file ({exc})") from None
    raw = (table.schema.metadata or {}).get(b"fastclip")
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    meta = _check_header(meta, path)
    key, dim = KINDS[meta["kind"]], meta["dim"]
    if key not in table.column_names or "vector" not in table.column_names or table.num_rows != meta["rows"]:
        raise OutputError(f"{path}: expected columns {key!r} and 'vector' with {meta['rows']} rows")
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)
    items = table.column(key).to_pylist()
    if f"{key}_bytes" in table.column_names:
        exact = table.column(f"{key}_bytes").to_pylist()
        items = [i if b is None else b.decode("utf-8", "surrogateescape") for i, b in zip(items, exact)]
    return EmbeddingsFile(vectors=vectors, items=items, meta=meta)


__all__ = [
    "EmbeddingsFile", "EmbeddingsWriter", "read_embeddings", "make_header", "check_output", "partial_dir",
    "output_files", "errors_path", "exact_bytes", "FORMAT", "VERSION", "SUFFIXES",
]
