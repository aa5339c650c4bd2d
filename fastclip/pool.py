"""A local process pool: one embedding tower per worker process, inputs in, vectors out, in input order.

The pool knows no model class: it asks the model for its `worker_spec()` (fastclip.WorkerSpec), and each
worker builds the model from it once (`spec.open`: the folder its parent already resolved, no hub access),
with onnxruntime threads split so workers x threads ~= cores, and runs the very batch call the in-process
path uses (`embed_batch`), so the vectors are the same. Results and errors cross the pipe as they are:
EmbeddingBatch objects, and exceptions that pickle themselves (fastclip's errors define __reduce__).

How it avoids fastembed's most-reported pool problems:
- a worker killed by the OOM killer or a segfault (fastembed #279: hangs forever): the parent waits on
  every worker's pipe AND its process sentinel at once, so a death is seen the moment it happens and
  the call fails with WorkerError naming the worker's pid, its exit signal, and the inputs it held;
- a generator closed or dropped early (#669: hangs): the pool ends its workers (pipe closed, then
  SIGTERM, then SIGKILL) and returns; nothing is left running. Ctrl-C in the parent does the same
  (workers ignore SIGINT; the parent decides), and a worker whose parent vanished exits on its own;
- memory (#222): at most `depth` batches per worker are in flight or waiting to be yielded, whatever the
  input length; with lazy_load=True the parent process never loads the model at all;
- GPUs left idle (#414): device_ids spreads the workers round-robin over the GPUs (`assign_devices`).

Processes are started with the "spawn" method on every OS, so the behaviour on Linux is the one users
get on macOS and Windows: a script needs the usual `if __name__ == "__main__":` guard.

Lifetime: `embed(..., parallel=N)` starts a pool for that call and ends it when the generator ends.
A job of many calls can keep one pool (`with EmbeddingPool(model, 4) as pool: pool.embed(...)`), as
sentence-transformers' start/stop pool does, to pay the worker start-up (1-3 s: import onnxruntime,
load the model) once.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from .batch import EmbeddingBatch, check_batching, one_or_many, rows_of
from .errors import FastClipError, WorkerError, first_line
from .runner import available_cores
from .worker import WorkerSpec

__all__ = ["EmbeddingPool", "assign_devices", "pooled_embed", "split_threads"]


def assign_devices(workers: int, device_ids: list[int] | None) -> list[int | None]:
    """GPU id per worker, round-robin over device_ids (None for every worker when there are none)."""
    if not device_ids:
        return [None] * workers
    return [int(device_ids[w % len(device_ids)]) for w in range(workers)]


def split_threads(workers: int, cores: int | None = None) -> int:
    """onnxruntime threads per worker so that workers x threads ~= cores (at least one each)."""
    return max(1, (cores or available_cores()) // max(1, workers))


# ------------------------------------------------------------------------------------------- worker

def _worker_main(conn, spec: WorkerSpec, threads: int, device_id: int | None) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model = spec.open(threads=threads, device_id=device_id)
        conn.send(("ready", os.getpid(), model.precision, model.device))
    except BaseException as exc:  # noqa: BLE001 - anything that stops the start is reported, then we exit
        conn.send(("failed", os.getpid(), _portable(exc)))
        return
    tasks: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        # Tasks are read as they come so the parent never blocks sending one while we send a result.
        while True:
            try:
                tasks.put(conn.recv())
            except (EOFError, OSError):
                os._exit(0)  # the parent closed the pool or is gone: nothing to finish

    threading.Thread(target=read, daemon=True, name="fastclip-pool-reader").start()
    while True:
        task_id, start, items, kw = tasks.get()
        try:
            message = ("ok", task_id, model.embed_batch(items, start_index=start, **kw))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it in input order
            message = ("error", task_id, _portable(exc, (start, start + len(items) - 1)))
        try:
            conn.send(message)
        except OSError:  # the parent closed the pool (or died) while we were running: nothing to report to
            os._exit(0)


def _portable(exc: BaseException, inputs: tuple[int, int] | None = None) -> BaseException:
    """`exc` itself where it survives pickling both ways, else a WorkerError naming it: an exception class
    whose constructor takes other arguments than its message would fail in the parent's recv()."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - whatever pickling raises, the report must still reach the parent
        return WorkerError(f"{type(exc).__name__}: {first_line(exc)}", pid=os.getpid(), inputs=inputs)
    return exc


# ------------------------------------------------------------------------------------------- parent

@dataclass
class _Worker:
    number: int
    process: Any
    conn: Any
    device_id: int | None
    pid: int = 0
    outstanding: deque = field(default_factory=deque)  # (call id, task id, (first index, last index), first source)


def _label(item: Any) -> str:
    """An input as a WorkerError names it: its path or text, else its type."""
    text = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


class EmbeddingPool:
    """`processes` worker processes (0: one per core), each holding `model`'s tower; use as a context manager.

    model: a model with `worker_spec()` (ImageEmbedding, TextEmbedding) or a WorkerSpec: what the workers
    build (construct the model with lazy_load=True to keep it out of this process).
    threads: onnxruntime threads per worker (default: cores // processes, at least 1).
    device_ids: GPU ids, assigned to the workers round-robin (default: the model's own device_ids).
    depth: batches each worker holds (one running, the rest queued): bounds memory and read-ahead.
    """

    def __init__(self, model: Any, processes: int = 0, *, threads: int | None = None,
                 device_ids: list[int] | None = None, depth: int = 2):
        if isinstance(model, WorkerSpec):
            self.spec = model
        elif callable(getattr(model, "worker_spec", None)):
            self.spec = model.worker_spec()
        else:
            raise TypeError(f"EmbeddingPool takes a model with worker_spec() (ImageEmbedding, TextEmbedding) or a "
                            f"WorkerSpec, got {type(model).__name__}")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
            raise ValueError(f"processes must be 0 (one per core) or a positive integer, got {processes!r}")
        self.processes = processes or available_cores()
        self.threads = threads or split_threads(self.processes)
        self.depth = max(1, int(depth))
        self.kind = self.spec.kind
        self.model_name = self.spec.model_name
        self._devices = assign_devices(self.processes,
                                       device_ids if device_ids is not None else self.spec.options.get("device_ids"))
        self._workers: list[_Worker] = []
        self._call = itertools.count()
        self._active: int | None = None
        self._closed = False
        self._start()

    # ---------------------------------------------------------------------------------- lifetime

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        try:
            for number, device_id in enumerate(self._devices):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(target=_worker_main, name=f"fastclip-worker-{number}", daemon=True,
                                      args=(child_end, self.spec, self.threads, device_id))
                process.start()
                child_end.close()
                self._workers.append(_Worker(number, process, parent_end, device_id, pid=process.pid))
            waiting = {w.conn: w for w in self._workers}
            sentinels = {w.process.sentinel: w for w in self._workers}
            while waiting:
                for ready in wait([*waiting, *sentinels]):
                    if ready in sentinels:
                        worker = sentinels.pop(ready)
                        if worker.conn in waiting and not worker.conn.poll():
                            raise self._died(worker, "while starting (importing onnxruntime, loading the model)")
                        continue
                    worker = waiting.pop(ready)
                    try:
                        message = ready.recv()
                    except (EOFError, OSError):
                        raise self._died(worker, "while starting (importing onnxruntime, loading the model)") from None
                    if message[0] == "failed":
                        raise message[2] from WorkerError(f"worker process {message[1]} failed to load "
                                                          f"{self.spec.folder}", pid=message[1])
                    worker.pid = message[1]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End every worker now (pipe closed, then SIGTERM, then SIGKILL); idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.close()  # a worker waiting for a task exits on EOF at once
            except OSError:
                pass
        for w in self._workers:
            w.process.join(timeout=0.5)
            if w.process.is_alive():  # busy inside a run: it would finish the batch first
                w.process.terminate()
                w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=2)
        self._workers = []

    def __enter__(self) -> EmbeddingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    # --------------------------------------------------------------------------------------- use

    def embed(self, items: Iterable[Any], batch_size: int | None = None, *, normalize: bool = True,
              errors: str = "raise", on_error: Callable[[FastClipError], None] | None = None,
              **options: Any) -> Iterator[np.ndarray | None]:
        """The model's `embed` spread over the workers: one vector (or None with errors="skip") per input,
        in input order, lazily; at most processes x depth batches are read ahead. options: the model's
        own batch options (truncate= for texts)."""
        batch_size = batch_size or self.spec.batch_size
        check_batching(batch_size, errors)
        if self._closed:
            raise FastClipError("this EmbeddingPool is closed")
        kw = {"normalize": normalize, "batch_size": batch_size, **options}
        return self._embed(one_or_many(items), batch_size, kw, errors, on_error)

    def embed_batches(self, items: Iterable[Any], batch_size: int | None = None, *, normalize: bool = True,
                      errors: str = "raise", **options: Any) -> Iterator[EmbeddingBatch]:
        """The model's `embed_batches` spread over the workers: one EmbeddingBatch per `batch_size`
        consecutive inputs, in input order, as the workers return them (no rows regrouped)."""
        batch_size = batch_size or self.spec.batch_size
        check_batching(batch_size, errors)
        if self._closed:
            raise FastClipError("this EmbeddingPool is closed")
        kw = {"normalize": normalize, "batch_size": batch_size, **options}
        return self._batches(one_or_many(items), batch_size, kw, errors)

    def _embed(self, items, batch_size, kw, errors, on_error) -> Iterator[np.ndarray | None]:
        for batch in self._batches(items, batch_size, kw, errors):
            yield from rows_of([batch], on_error)

    def _batches(self, items, batch_size, kw, errors) -> Iterator[EmbeddingBatch]:
        if self._active is not None:
            raise FastClipError("this EmbeddingPool is already serving another embed() stream; "
                                "finish or close that one first")
        call = self._active = next(self._call)
        try:
            for batch in self._ordered(call, items, batch_size, kw):
                if errors == "raise" and batch.failures:
                    raise batch.first_failure()
                yield batch
        finally:
            self._active = None

    def _ordered(self, call: int, items: Iterable[Any], batch_size: int, kw: dict) -> Iterator[EmbeddingBatch]:
        """The batches in input order, each dispatched to the least busy worker."""
        source = iter(items)
        exhausted = False
        next_task = 0  # id of the next batch to send
        next_yield = 0  # id of the next batch to hand out
        done: dict[int, EmbeddingBatch] = {}
        start = 0
        limit = self.processes * self.depth
        while True:
            while not exhausted and next_task - next_yield < limit:
                worker = min(self._workers, key=lambda w: len(w.outstanding))
                if len(worker.outstanding) >= self.depth:
                    break
                chunk = list(itertools.islice(source, batch_size))
                if not chunk:
                    exhausted = True
                    break
                chunk = [item.read() if hasattr(item, "read") and not hasattr(item, "getpixel") else item
                         for item in chunk]  # open file objects do not cross processes; their bytes do
                self._send(worker, call, next_task, start, chunk, kw)
                start += len(chunk)
                next_task += 1
            if next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
                continue
            if exhausted and next_yield == next_task:
                return
            self._receive(call, done)

    def _send(self, worker: _Worker, call: int, task: int, start: int, chunk: list, kw: dict) -> None:
        span = (start, start + len(chunk) - 1)
        worker.outstanding.append((call, task, span, _label(chunk[0])))
        try:
            worker.conn.send((task, start, chunk, kw))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._failed(worker) from None
        except Exception as exc:  # pickling: something in the batch cannot be sent to another process
            worker.outstanding.pop()
            raise TypeError(f"inputs #{span[0]}-#{span[1]} cannot be sent to a worker process ({exc}); "
                            "pass paths, bytes, PIL images or numpy arrays") from None

    def _receive(self, call: int, done: dict) -> None:
        busy = [w for w in self._workers if w.outstanding]
        by_conn = {w.conn: w for w in busy}
        by_sentinel = {w.process.sentinel: w for w in busy}
        for ready in wait([*by_conn, *by_sentinel]):
            worker = by_conn.get(ready) or by_sentinel[ready]
            if ready is worker.process.sentinel and worker.conn.poll():
                continue  # it sent something before exiting: read that first
            if ready is worker.process.sentinel:
                raise self._failed(worker)
            try:
                status, task, payload = worker.conn.recv()
            except (EOFError, OSError):
                raise self._failed(worker) from None
            owner, expected, span, first = worker.outstanding.popleft()
            if owner != call:
                continue  # a batch of an earlier stream that was closed early: dropped
            assert task == expected, "a worker answers its tasks in the order it got them"
            if status == "error":
                raise payload from WorkerError(f"raised in worker process {worker.pid} on inputs "
                                               f"#{span[0]}-#{span[1]}", pid=worker.pid, inputs=span)
            done[task] = payload

    def _failed(self, worker: _Worker) -> WorkerError:
        worker.process.join(timeout=2)
        _, _, span, first = worker.outstanding[0] if worker.outstanding else (None, None, None, None)
        doing = f"while embedding inputs #{span[0]}-#{span[1]} (first: {first})" if span else "while idle"
        return self._died(worker, doing)

    def _died(self, worker: _Worker, doing: str) -> WorkerError:
        worker.process.join(timeout=2)
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}" if code is not None else "stopped answering"
        hint = ("; SIGKILL often means the out-of-memory killer: use fewer processes or a smaller batch_size"
                if code == -signal.SIGKILL else "")
        span = None
        if worker.outstanding:
            span = worker.outstanding[0][2]
        error = WorkerError(f"{self.kind} worker process {worker.pid} ({worker.process.name}) {how} {doing}{hint}",
                            pid=worker.pid, inputs=span)
        self.close()  # the others are ended too: the call has failed, nothing may be left running
        return error


def pooled_embed(model: Any, items: Iterable[Any], batch_size: int, processes: int, **kw: Any) -> Iterator:
    """embed(..., parallel=processes): a pool for this call only, ended when the generator ends."""
    with EmbeddingPool(model, processes) as pool:
        yield from pool.embed(items, batch_size, **kw)
