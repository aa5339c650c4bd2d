"""Dynamic batching: one bounded queue per model tower, merged into `embed_batch` calls on worker threads.

A request becomes a `Job` (its inputs, a slot per result, an asyncio future). Worker threads take inputs
from the queued jobs, run them through the tower's own batch call (`ImageEmbedding.embed_batch` /
`TextEmbedding.embed_batch`: decode, preprocess, run, normalize — the same code as in-process `embed`)
and hand each job its rows back; the event loop only waits on the future.

Fairness: each batch is shared max-min fairly between the oldest `max_batch` queued jobs (each job gets
an equal share, a job needing less than its share gives the rest to the others), so a 256-image request
takes its turn alongside single-image requests instead of holding the tower for 8 batches; a small
request that arrives behind it waits for at most one batch in progress per worker.

Waiting: a worker that finds fewer than `max_batch` inputs waits up to `max_wait` after the oldest of
them arrived, for more to merge. Inputs that queued while a batch ran have already waited, so under load
batches leave at once and full.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from ..batch import EmbeddingBatch
from ..errors import FastClipError

log = logging.getLogger("fastclip.serve")

__all__ = ["Batcher", "Job", "QueueFull", "fair_shares"]


class QueueFull(Exception):
    """The tower's queue cannot take this many more inputs now (answered 503 + Retry-After)."""


class Job:
    """One request's inputs for one tower; `future` resolves to a list of (vector or FastClipError) per input."""

    def __init__(self, items: Sequence[Any], loop: asyncio.AbstractEventLoop):
        self.items = list(items)
        self.results: list[np.ndarray | FastClipError | None] = [None] * len(self.items)
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.next = 0  # first input not yet handed to a worker
        self.outstanding = len(self.items)  # inputs whose result has not come back
        self.arrived = time.monotonic()
        self.cancelled = False

    @property
    def waiting(self) -> int:
        return len(self.items) - self.next

    def _finish(self, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(self.results)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def fair_shares(waiting: Sequence[int], capacity: int) -> list[int]:
    """Max-min fair split of `capacity` inputs between jobs needing `waiting[i]` each, in queue order.

    Jobs needing less than an equal share get all they need; what they leave is split between the rest
    (earlier jobs get the remainder first). At most `capacity` jobs get a share.
    """
    shares = [0] * len(waiting)
    left = capacity
    order = sorted(range(min(len(waiting), capacity)), key=lambda i: (waiting[i], -i))  # ties: the oldest last, so it gets the remainder
    for k, i in enumerate(order):
        share = min(waiting[i], left // (len(order) - k))
        shares[i] = share
        left -= share
    for i in range(len(shares)):  # rounding remainder, oldest first
        if left == 0:
            break
        extra = min(waiting[i] - shares[i], left)
        shares[i] += extra
        left -= extra
    return shares


class Batcher:
    """Bounded queue + worker threads for one tower.

    run(items) -> EmbeddingBatch over those items (start_index 0); it must not raise for one bad input.
    max_queue bounds the inputs waiting (not yet handed to a worker); submit() raises QueueFull beyond it.
    """

    def __init__(self, name: str, run: Callable[[list], EmbeddingBatch], *, max_batch: int, max_wait: float,
                 max_queue: int, workers: int, on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait < 0:
            raise ValueError(f"{name}: max_batch, max_queue and workers must be >= 1 and max_wait >= 0")
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._jobs: deque[Job] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        # worker thread -> monotonic time its current batch started (None while idle): /health reads it
        self._busy_since: dict[threading.Thread, float | None] = {}
        self.last_batch_done = time.monotonic()
        self.batches = 0
        self._threads = [threading.Thread(target=self._work, name=f"fastclip-serve-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            self._busy_since[t] = None
            t.start()

    # ------------------------------------------------------------------------------ event loop side

    @property
    def queued(self) -> int:
        """Inputs waiting for a worker."""
        return self._queued

    def submit(self, items: Sequence[Any], loop: asyncio.AbstractEventLoop) -> Job:
        job = Job(items, loop)
        if not job.items:
            job.future.set_result([])
            return job
        with self._cond:
            if self._stopping:
                raise QueueFull(f"{self.name} is shutting down")
            if self._queued + len(job.items) > self.max_queue:
                raise QueueFull(f"{self.name}: {self._queued} inputs queued, {len(job.items)} more would pass "
                                f"the limit of {self.max_queue}")
            self._jobs.append(job)
            self._queued += len(job.items)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> int:
        """Drop the job's inputs that no worker has taken yet (its caller went away); returns how many."""
        with self._cond:
            job.cancelled = True
            dropped = job.waiting
            if dropped:
                job.next = len(job.items)
                self._queued -= dropped
                try:
                    self._jobs.remove(job)
                except ValueError:
                    pass
        return dropped

    def health(self, stall_after: float) -> str | None:
        """None when the workers work, else why not: a worker thread died, or one batch has run longer than
        `stall_after` seconds (a wedged decode or inference: requests would hang while /health said OK)."""
        now = time.monotonic()
        for t, since in list(self._busy_since.items()):
            if not t.is_alive() and not self._stopping:
                return f"{self.name}: worker thread {t.name} has died"
            if since is not None and now - since > stall_after:
                return f"{self.name}: a batch has been running for {now - since:.0f} s (limit {stall_after:g} s)"
        with self._cond:
            oldest = min((job.arrived for job in self._jobs), default=None)
        if oldest is not None and now - oldest > stall_after and now - self.last_batch_done > stall_after:
            return f"{self.name}: inputs have waited {now - oldest:.0f} s and no batch finished in that time"
        return None

    def stop(self, timeout: float = 5.0) -> None:
        """Fail what is still queued, let running batches finish, end the threads."""
        with self._cond:
            self._stopping = True
            jobs, self._jobs = list(self._jobs), deque()
            self._queued = 0
            self._cond.notify_all()
        for job in jobs:
            job.next = len(job.items)
            job._finish(QueueFull(f"{self.name} is shutting down"))
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -------------------------------------------------------------------------------- worker side

    def _take(self) -> list[tuple[Job, int, int]] | None:
        """Wait for inputs and take one batch: [(job, first input, count)], or None when stopping."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            while self._queued < self.max_batch and not self._stopping:
                oldest = min(j.arrived for j in self._jobs) if self._jobs else time.monotonic()
                left = oldest + self.max_wait - time.monotonic()
                if left <= 0 or not self._jobs:
                    break
                self._cond.wait(left)
            if self._stopping or not self._jobs:
                return None if self._stopping else []
            jobs = list(self._jobs)
            shares = fair_shares([j.waiting for j in jobs], self.max_batch)
            taken = []
            for job, share in zip(jobs, shares):
                if share:
                    taken.append((job, job.next, share))
                    job.next += share
                    self._queued -= share
                    if job.waiting == 0:
                        self._jobs.remove(job)
            # Jobs that still wait go behind the ones that arrived after them: round robin between requests.
            for job, _, _ in taken:
                if job.waiting:
                    self._jobs.remove(job)
                    self._jobs.append(job)
            if self._jobs:
                self._cond.notify()  # an idle worker may start on the rest now
            return taken

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            taken = self._take()
            if taken is None:
                return
            if not taken:
                continue
            items = [item for job, first, n in taken for item in job.items[first:first + n]]
            started = time.monotonic()
            self._busy_since[me] = started
            try:
                batch = self._run(items)
                if batch.count != len(items):
                    raise RuntimeError(f"the batch call returned {batch.count} results for {len(items)} inputs")
                results = [row if row is not None else batch.failures[i] for i, row in enumerate(batch.rows())]
                error = None
            except Exception as exc:  # noqa: BLE001 - a failure of the model itself fails this batch's requests only
                log.exception("%s: batch of %d inputs failed", self.name, len(items))
                results, error = None, exc
            finally:
                self._busy_since[me] = None
            self.last_batch_done = time.monotonic()
            self.batches += 1
            if self._on_batch is not None:
                self._on_batch(len(items), self.last_batch_done - started)
            self._deliver(taken, results, error)

    def _deliver(self, taken: list[tuple[Job, int, int]], results: list | None, error: BaseException | None) -> None:
        position = 0
        for job, first, n in taken:
            if results is not None:
                job.results[first:first + n] = results[position:position + n]
            position += n
            with self._cond:
                job.outstanding -= n
                done = job.outstanding == 0
            if error is not None:
                job._finish(error)
            elif done and not job.cancelled:
                job._finish()
