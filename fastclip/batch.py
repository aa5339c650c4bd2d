"""`EmbeddingBatch`: what one batch-level call returns, for images and texts alike.

Every consumer (the lazy generators, the process pool, Ray, the CLI writer, the server) takes these as
they come and maps rows back to inputs through `indices` / `ok` / `rows()`; nobody regroups rows.
The check of the batch-call conventions they share (fastclip.defaults: batch sizes, `errors=`) lives here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .defaults import ERRORS, IMAGE_BATCH, TEXT_BATCH
from .errors import FastClipError

__all__ = ["EmbeddingBatch", "IMAGE_BATCH", "TEXT_BATCH", "ERRORS", "check_batching", "one_or_many",
           "rows_of"]



def check_batching(batch_size: Any, errors: Any) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")


def one_or_many(items: Any) -> Any:
    """A lone str or path is one input, not a stream of characters."""
    return [items] if isinstance(items, (str, os.PathLike)) else items


@dataclass(frozen=True)
class EmbeddingBatch:
    """Vectors for inputs start_index .. start_index + count - 1.

    vectors: float32 (n_ok, dim), one row per input that could be embedded, in input order.
    failures: {input index: ImageError or TextError} for the others.
    `ok` (bool mask over the inputs) and `indices` (input index of each row of `vectors`) map rows back
    to inputs; `rows()` yields one vector or None per input, as `embed(errors="skip")` does.
    """

    start_index: int
    count: int
    vectors: np.ndarray
    failures: dict[int, FastClipError] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.vectors) + len(self.failures) != self.count:
            raise ValueError(f"batch of {self.count} inputs holds {len(self.vectors)} vectors and "
                             f"{len(self.failures)} failures")

    @property
    def stop_index(self) -> int:
        return self.start_index + self.count

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(self.count, dtype=bool)
        mask[[i - self.start_index for i in self.failures]] = False
        return mask

    @property
    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.ok) + self.start_index

    def rows(self) -> Iterator[np.ndarray | None]:
        vectors = iter(self.vectors)
        for i in range(self.start_index, self.stop_index):
            yield None if i in self.failures else next(vectors)

    def first_failure(self) -> FastClipError | None:
        """The failure of the lowest input index, which `errors="raise"` raises."""
        return self.failures[min(self.failures)] if self.failures else None

    def split(self, size: int) -> Iterator[EmbeddingBatch]:
        """This batch as consecutive batches of `size` inputs (views of its vectors, no copy)."""
        if self.count <= size:
            yield self
            return
        ok = self.ok
        row = 0
        for lo in range(0, self.count, size):
            hi = min(lo + size, self.count)
            n_ok = int(ok[lo:hi].sum())
            start, stop = self.start_index + lo, self.start_index + hi
            failures = {i: e for i, e in self.failures.items() if start <= i < stop}
            yield EmbeddingBatch(start_index=start, count=hi - lo, vectors=self.vectors[row : row + n_ok], failures=failures)
            row += n_ok


def rows_of(batches: Iterable[EmbeddingBatch],
            on_error: Callable[[FastClipError], None] | None = None) -> Iterator[np.ndarray | None]:
    """One vector (None for a failed input, whose error goes to on_error) per input, in input order."""
    for batch in batches:
        for index, row in enumerate(batch.rows(), batch.start_index):
            if row is None and on_error is not None:
                on_error(batch.failures[index])
            yield row

