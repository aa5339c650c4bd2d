"""Exact top-k search by dot product, a block of the corpus at a time (corpora larger than memory).

Each block runs one onnxruntime graph, Gemm then TopK (see _graphs: MLAS' sgemm keeps pace with
faiss' exact IndexFlatIP, and TopK picks the best k per query inside the same run), and the block's
k best are merged into the running k best. Memory: one block of scores (queries x block rows) and
one block of the corpus, whatever the corpus size; a memory-mapped .npy is read block by block.

Ties: equal scores come out in corpus order (lower index first): ONNX TopK orders ties by index,
and the merge keeps earlier blocks (lower indices) ahead of later ones on equal scores.
"""

from __future__ import annotations

import os

import numpy as np

from ._graphs import session

# Scores of one block, and the block of the corpus itself, stay around 64 MB each. Measured on
# 1,000 queries x 131k x 512 (2 cores): blocks of 4k-64k rows run within ~10 % of each other.
BLOCK_BYTES = 64 << 20
MIN_BLOCK_ROWS = 1024
QUERY_BLOCK = 4096


def _open_corpus(corpus):
    if isinstance(corpus, (str, os.PathLike)):
        return np.load(corpus, mmap_mode="r")
    if not hasattr(corpus, "shape") or not hasattr(corpus, "__getitem__"):
        corpus = np.asarray(corpus, dtype=np.float32)
    return corpus


def search(queries, corpus, k: int = 10, *, block_rows: int | None = None,
           threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k corpus rows with the highest dot product with each query, best first.

    queries: (n, d) or one (d,) vector. corpus: (m, d) array, a memory-mapped array
    (``np.load(path, mmap_mode="r")``) or the path of a .npy file (memory-mapped here); float32 is
    read in place, other dtypes are converted a block at a time.
    Returns (indices int64, scores float32), each (n, k) (or (k,) for one query vector);
    k larger than the corpus gives all of it. Exact: the same rows as a full sort of the scores
    (equal scores in corpus order), scores equal to numpy's product within float32 rounding.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    corpus = _open_corpus(corpus)
    q = np.asarray(queries, dtype=np.float32)
    single = q.ndim == 1
    q = np.ascontiguousarray(q[None, :] if single else q)
    if q.ndim != 2 or len(corpus.shape) != 2:
        raise ValueError(f"queries must be (n, d) or (d,) and corpus (m, d); got {np.shape(queries)} and {corpus.shape}")
    m, d = corpus.shape
    if q.shape[1] != d:
        raise ValueError(f"queries are {q.shape[1]}-d, the corpus is {d}-d")
    if m == 0:
        raise ValueError("the corpus is empty")
    finite = np.isfinite(q).all(axis=1)
    if not finite.all():
        raise ValueError(f"query {int(np.flatnonzero(~finite)[0])} is not finite (NaN or inf)")
    k = int(min(k, m))
    n = len(q)
    indices = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    for qs in range(0, n, QUERY_BLOCK):
        qi, qv = _search_block(q[qs : qs + QUERY_BLOCK], corpus, k, block_rows, threads)
        indices[qs : qs + len(qi)] = qi
        scores[qs : qs + len(qi)] = qv
    return (indices[0], scores[0]) if single else (indices, scores)


def _search_block(q: np.ndarray, corpus, k: int, block_rows: int | None, threads: int | None):
    m, d = corpus.shape
    if block_rows is None:
        block_rows = max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * max(len(q), d)))
    rows = max(1, min(m, int(block_rows)))
    topk = session("topk", threads)
    best_v = best_i = None
    for start in range(0, m, rows):
        block = np.ascontiguousarray(corpus[start : start + rows], dtype=np.float32)
        kk = np.array([min(k, len(block))], np.int64)
        values, idx, total = topk.run(None, {"a": q, "b": block, "k": kk})
        if not np.isfinite(total):  # onnxruntime's TopK would pass over a NaN row silently
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if len(bad):  # (else a finite block whose sum overflowed)
                raise ValueError(f"corpus row {start + int(bad[0])} is not finite (NaN or inf): it cannot be ranked")
        idx += start
        if best_v is None:
            best_v, best_i = values, idx
            continue
        # earlier blocks first: a stable sort keeps the lower corpus index ahead on equal scores
        both_v = np.concatenate([best_v, values], axis=1)
        both_i = np.concatenate([best_i, idx], axis=1)
        order = np.argsort(-both_v, axis=1, kind="stable")[:, :k]
        best_v = np.take_along_axis(both_v, order, axis=1)
        best_i = np.take_along_axis(both_i, order, axis=1)
    return best_i, best_v


__all__ = ["search"]
