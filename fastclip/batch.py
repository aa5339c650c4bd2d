"""`EmbeddingBatch`: what one batch-level call returns, for images and texts alike.

Every consumer (the lazy generators, the process pool, Ray, the CLI writer, the server) takes these as
they come and maps rows back to inputs through `indices` / `ok` / `rows()`; nobody regroups rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import FastClipError

__all__ = ["EmbeddingBatch", "ImageBatch"]


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


# The name images used before texts shared the type; kept so existing imports work.
ImageBatch = EmbeddingBatch
