"""Cross-modal retrieval quality in both directions, from vectors: Recall@K, ranks and MRR; mAP, P@K, nDCG@K.

The protocol and the key names are LAION clip_benchmark's (`clip_benchmark/metrics/zeroshot_retrieval.py`):

* ``image_retrieval_recall@K``: text -> image. Each caption has exactly one correct image; a caption
  is a hit when that image is among its K best-scoring images. Mean over captions.
* ``text_retrieval_recall@K``: image -> text. An image is a hit when ANY of its captions is among its
  K best-scoring captions. Mean over images.

Scores are dot products, ``text_vectors @ image_vectors.T`` (cosines for L2-normalized vectors, which
is what clip_benchmark scores). Both directions are read from the same score matrix, as clip_benchmark
reads ``scores`` and ``scores.T``, computed once, a block of captions at a time, so memory stays
bounded (about 64 MB of scores at a time by default) for any number of captions.

``retrieval_metrics`` adds trec_eval's ranking measures, for ``{dir}`` = ``image_retrieval`` (a query
per caption, its one image relevant) and ``text_retrieval`` (a query per image, all its captions
relevant), each a mean over the queries, over the full ranking of all candidates:

* ``{dir}_precision@K``: relevant items in the top K, divided by K (also when fewer than K
  candidates or relevant items exist, as trec_eval's P_K).
* ``{dir}_mAP``: the mean over queries of AP, the mean over the query's relevant items of the
  precision at each one's rank (all are ranked, so none counts as 0). For text -> image it equals
  the MRR.
* ``{dir}_ndcg@K``: DCG@K / ideal DCG@K with binary gains and a log2 discount: the sum of
  1 / log2(rank + 1) over the relevant items ranked within K, divided by the same sum for the best
  possible ranking (min(K, relevant) items at ranks 1, 2, ...).

``reference_metrics`` computes all of them the plain way (a sort per query) from a whole score
matrix; tests check the fast path against it, and against scikit-learn.

Ties: an image (or caption) whose score equals the correct one's exactly is ranked ahead of it when
its index is lower, always. clip_benchmark's ``torch.topk`` keeps whichever of equal scores its
selection heap happens to hold (measured, torch 2.13 CPU: pairs of duplicated images split at the K
boundary went either way, ~55/45), so on data with exact ties (duplicate images or captions) its
numbers can differ from ours within the span the ties allow; without exact ties they are equal.

Why ranks are never computed from a re-computed score: the score of a correct pair recomputed with
another summation order (an einsum, a float64 dot) differs from the matrix's in the last bit, and a
caption whose correct image ties or nearly ties another then silently moves a rank. Every comparison
below is between entries of the one score matrix.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._graphs import session

DEFAULT_KS = (1, 5, 10)
# Scores held at once: the block of captions x all images. 64 MB keeps the whole step well under the
# 600 MB budget (the block, two boolean masks of a quarter of its size, the vectors) on COCO-5k sizes.
CHUNK_BYTES = 64 << 20
# Half-width of the bracket around each image's best caption score, in units of sqrt(d) 2^-24 |a| |b|
# (see retrieval_ranks). 0 would send every image to the exact recount (tests use that path).
_BAND = 4.0
SLICE_BYTES = 1 << 20

DIRECTIONS = (
    # (key prefix, what it measures, unit ranked)
    ("image_retrieval", "text -> image", "captions"),
    ("text_retrieval", "image -> text", "images"),
)


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows = vectors), got shape {a.shape}")
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} row {bad[0]} is not finite (NaN or inf; {len(bad)} such rows): ranks would be meaningless")
    return a


def _check_index(text_image_index, n_texts: int, n_images: int) -> np.ndarray:
    idx = np.asarray(text_image_index)
    if idx.ndim != 1 or len(idx) != n_texts:
        raise ValueError(f"text_image_index must give one image index per caption ({n_texts}), got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"text_image_index must hold integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    out = np.flatnonzero((idx < 0) | (idx >= n_images))
    if len(out):
        raise ValueError(f"caption {out[0]} points to image {idx[out[0]]}, outside 0..{n_images - 1}")
    captioned = np.bincount(idx, minlength=n_images)
    orphans = np.flatnonzero(captioned == 0)
    if len(orphans):
        # clip_benchmark counts such an image as a miss (0/0 recall is NaN, and NaN > 0 is False);
        # it is nearly always an index that is off, so say so instead of lowering the recall.
        raise ValueError(
            f"image {orphans[0]} has no caption ({len(orphans)} such images): every image needs at least one "
            "caption in text_image_index"
        )
    return idx


def _count(scores: np.ndarray, lo: np.ndarray, hi: np.ndarray, mask: np.ndarray, gt: np.ndarray, ge: np.ndarray,
           dtype=np.uint8) -> None:
    """Add to gt / ge (levels, columns) the per-column counts of scores (rows, columns) above hi / at or
    above lo (levels, columns). mask: (rows, levels, columns) scratch; dtype must hold the row count."""
    np.greater(scores[:, None, :], hi, out=mask)
    gt += np.add.reduce(mask.view(np.uint8), axis=0, dtype=dtype)
    np.greater_equal(scores[:, None, :], lo, out=mask)
    ge += np.add.reduce(mask.view(np.uint8), axis=0, dtype=dtype)


class _Level:
    """One rank threshold per image: its m-th best caption (level m), for the images with more than m captions.

    Before the scores are known, the threshold is bracketed by [lo, hi], a band around the m-th best
    estimate (the m-th order statistic moves no more than each caption's estimate does, so the same
    half-width holds). Scores above hi are counted as the blocks stream by; those inside the band are
    kept (column position, caption index, score) and compared with the exact threshold at the end.
    """

    def __init__(self, cols: np.ndarray, estimate: np.ndarray, eps: np.ndarray, n_images: int):
        self.cols = cols
        self.every = len(cols) == n_images  # all columns: read the block in place, no gather
        self.lo = (estimate - eps).astype(np.float32)
        self.hi = (estimate + eps).astype(np.float32)
        self.above = np.zeros(len(cols), np.int64)
        self.band: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def keep(self, scores: np.ndarray, first_row: int, gt: np.ndarray, ge: np.ndarray, own: np.ndarray,
             correct: np.ndarray) -> None:
        """After a block: count what was above the band, keep what fell inside it.

        own, correct: each block row's image and its score there. Every caption's own score lies in
        one of its image's bands (they are built around those scores), so own entries are kept from
        (own, correct) directly, and only the columns with other entries in the band are read back
        from the block (a strided gather).
        """
        self.above += gt
        if self.every:
            pos, rows = own, np.arange(len(own))
        else:
            pos = np.minimum(np.searchsorted(self.cols, own), len(self.cols) - 1)
            rows = np.flatnonzero(self.cols[pos] == own)
            pos = pos[rows]
        value = correct[rows]
        inside = (value >= self.lo[pos]) & (value <= self.hi[pos])
        pos, rows, value = pos[inside], rows[inside], value[inside]
        others = np.flatnonzero((ge - gt) != np.bincount(pos, minlength=len(self.cols)))
        if len(others):
            sub = scores[:, self.cols[others]]
            r, c = np.nonzero((sub >= self.lo[others]) & (sub <= self.hi[others]))
            self.band.append((others[c], r + first_row, sub[r, c]))
            alone = ~np.isin(pos, others)  # those columns' own entries came with the gather
            pos, rows, value = pos[alone], rows[alone], value[alone]
        self.band.append((pos, rows + first_row, value))

    def ranks(self, threshold: np.ndarray, caption: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """1-based ranks of each column's threshold (score, caption index), and where the bracket missed it."""
        ranks = self.above + 1
        if self.band:
            pos, row, value = (np.concatenate(x) for x in zip(*self.band))
            ahead = (value > threshold[pos]) | ((value == threshold[pos]) & (row < caption[pos]))
            ranks += np.bincount(pos[ahead], minlength=len(self.cols))
        return ranks, (threshold < self.lo) | (threshold > self.hi)


def _ranks(image_vectors, text_vectors, text_image_index, *, every_caption: bool, chunk_bytes: int,
           threads: int | None):
    """Caption ranks (text -> image) and, per image, the ranks of its best caption or of all its captions.

    Returns (caption_ranks, image_order, own_ranks, counts): caption_ranks[j] as in retrieval_ranks;
    image_order lists caption indices grouped by image (image 0's first), each image's captions
    in ranking order (higher score first, lower index on ties); own_ranks[p] is the 1-based rank of
    caption image_order[p] among all captions for its image. Only each image's best caption when
    every_caption is False (then image_order and own_ranks have one entry per image). counts[i]: the
    number of captions of image i.
    """
    images = _as_matrix(image_vectors, "image_vectors")
    texts = _as_matrix(text_vectors, "text_vectors")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image vectors are {images.shape[1]}-d, text vectors {texts.shape[1]}-d")
    n_images, n_texts = len(images), len(texts)
    idx = _check_index(text_image_index, n_texts, n_images)

    # Image -> text needs, for each image, its captions' scores before the captions of other images
    # can be counted against them, and those captions may come in any block. An estimate of each
    # (float64, another summation order) only brackets it: a band [lo, hi] around the estimate, many
    # times wider than the float32 rounding of a d-term dot product (measured: a few 1e-7 for unit
    # vectors, d = 512; the band is 4 sqrt(d) 2^-24 |a| |b|, ~5e-6). See _Level. The bracket is
    # checked at the end; an image outside it is recounted exactly in another pass.
    t64 = texts.astype(np.float64)
    i64 = images.astype(np.float64)
    pair = np.einsum("jd,jd->j", t64, i64[idx])
    tnorm = np.zeros(n_images)
    np.maximum.at(tnorm, idx, np.linalg.norm(t64, axis=1))
    eps = _BAND * images.shape[1] ** 0.5 * 2.0**-24 * np.linalg.norm(i64, axis=1) * tnorm + 1e-30
    del t64, i64
    counts = np.bincount(idx, minlength=n_images)
    starts = np.cumsum(counts) - counts
    by_estimate = np.lexsort((-pair, idx))  # grouped by image, best estimate first
    levels = []
    for m in range(int(counts.max()) if every_caption else 1):
        cols = np.flatnonzero(counts > m)
        levels.append(_Level(cols, pair[by_estimate[starts[cols] + m]], eps[cols], n_images))
    del pair

    caption_ranks = np.empty(n_texts, np.int64)
    correct_all = np.empty(n_texts, np.float32)  # each caption's score with its own image (matrix entries)
    scorer = session("scores", threads)
    rows = max(1, min(n_texts, chunk_bytes // (4 * n_images), 65535))  # uint16 column counts below
    # The comparisons run on slices of ~1 MB, which stay in cache across the several passes over them
    # (measured, COCO-5k sizes: 3x faster than passes over the whole 64 MB block), and compare a slice
    # with the thresholds of all levels in one broadcast call.
    sub = max(1, min(rows, 255, SLICE_BYTES // (4 * n_images)))  # 255: uint8 counts per slice
    mask = np.empty((sub, n_images), bool)
    every = [lv for lv in levels if lv.every]
    lo, hi = np.stack([lv.lo for lv in every]), np.stack([lv.hi for lv in every])
    masks = np.empty((sub, len(every), n_images), bool)
    for start in range(0, n_texts, rows):
        stop = min(n_texts, start + rows)
        scores = scorer.run(None, {"a": texts[start:stop], "b": images})[0]
        own = idx[start:stop]
        correct = scores[np.arange(stop - start), own]
        correct_all[start:stop] = correct
        gt = np.zeros((len(every), n_images), np.uint16)
        ge = np.zeros((len(every), n_images), np.uint16)
        for s in range(0, stop - start, sub):
            part = scores[s : s + sub]
            m = mask[: len(part)]
            # text -> image: images above the caption's own, plus equal ones with a lower index
            c = correct[s : s + sub, None]
            np.greater(part, c, out=m)
            ahead = np.add.reduce(m.view(np.uint8), axis=1, dtype=np.int64)
            np.equal(part, c, out=m)
            for r in np.flatnonzero(np.add.reduce(m.view(np.uint8), axis=1, dtype=np.int64) > 1):
                ahead[r] += np.count_nonzero(m[r, : own[s + r]])
            caption_ranks[start + s : start + s + len(part)] = ahead + 1
            # image -> text: the levels with a threshold on every column
            _count(part, lo, hi, masks[: len(part)], gt, ge)
        for n, level in enumerate(every):
            level.keep(scores, start, gt[n], ge[n], own, correct)
        for level in levels[len(every):]:  # levels over some columns only: a gathered copy
            part = scores[:, level.cols]
            g, e = np.zeros((2, 1, len(level.cols)), np.uint16)
            _count(part, level.lo[None], level.hi[None], np.empty((len(part), 1, part.shape[1]), bool), g, e,
                   np.uint16)
            level.keep(scores, start, g[0], e[0], own, correct)
        del scores

    # each image's captions in ranking order: score (the matrix entry) down, then index up
    image_order = np.lexsort((np.arange(n_texts), -correct_all, idx))
    own_ranks = np.empty(n_texts if every_caption else n_images, np.int64)
    redo = []
    for m, level in enumerate(levels):
        at = starts[level.cols] + m
        ranks, outside = level.ranks(correct_all[image_order[at]], image_order[at])
        own_ranks[at if every_caption else level.cols] = ranks
        redo.append(level.cols[outside])
    redo = np.unique(np.concatenate(redo))
    if len(redo):  # never observed: an exact second pass over those images' columns
        for i, ranks in zip(redo, _recount(texts, images, idx, redo, scorer, rows, chunk_bytes)):
            own_ranks[starts[i] + np.arange(len(ranks)) if every_caption else i] = ranks if every_caption else ranks[0]
    return caption_ranks, image_order if every_caption else image_order[starts], own_ranks, counts


def retrieval_ranks(image_vectors, text_vectors, text_image_index, *, chunk_bytes: int = CHUNK_BYTES,
                    threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks in both directions, from one score matrix computed a block of captions at a time.

    Returns (caption_ranks, image_ranks): caption_ranks[j] is where caption j's image comes among all
    images for caption j (text -> image); image_ranks[i] is where image i's best-placed caption comes
    among all captions for image i (image -> text). Exact ties: lower index first (see the module doc).
    """
    caption_ranks, _, image_ranks, _ = _ranks(image_vectors, text_vectors, text_image_index, every_caption=False,
                                           chunk_bytes=chunk_bytes, threads=threads)
    return caption_ranks, image_ranks


def _recount(texts, images, idx, which, scorer, rows, chunk_bytes) -> list[np.ndarray]:
    """For each image of `which`: the ranks of all its captions, in ranking order, from its full column
    computed in the same blocks as the main pass."""
    out = []
    group = max(1, chunk_bytes // (4 * len(texts)))  # columns held at once
    for g in range(0, len(which), group):
        part = which[g : g + group]
        columns = np.concatenate([
            scorer.run(None, {"a": texts[s : s + rows], "b": images})[0][:, part] for s in range(0, len(texts), rows)
        ])
        for n, i in enumerate(part):
            column = columns[:, n]
            own = np.flatnonzero(idx == i)
            own = own[np.lexsort((own, -column[own]))]
            out.append(np.array([np.count_nonzero(column > column[j]) + np.count_nonzero(column[:j] == column[j]) + 1
                                 for j in own]))
    return out


def _f32_mean(hits: int, n: int) -> float:
    # clip_benchmark averages a float32 tensor of 0/1 and calls .item(): the float32 nearest to
    # hits / n (both exact in float32, so the division rounds once). Same bits here.
    return float(np.float32(hits) / np.float32(n))


def summarize(caption_ranks: np.ndarray, image_ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics dict from ranks: clip_benchmark's recall keys, then ranks, MRR and RSUM."""
    ks = _check_ks(ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = _f32_mean(int(np.count_nonzero(caption_ranks <= k)), len(caption_ranks))
        out[f"text_retrieval_recall@{k}"] = _f32_mean(int(np.count_nonzero(image_ranks <= k)), len(image_ranks))
    for prefix, ranks in (("image_retrieval", caption_ranks), ("text_retrieval", image_ranks)):
        out[f"{prefix}_mean_rank"] = float(ranks.mean())
        out[f"{prefix}_median_rank"] = float(np.median(ranks))
        out[f"{prefix}_mrr"] = float((1.0 / ranks).mean())
    # RSUM as the retrieval literature reports it: the recalls in percent, summed (600 = perfect
    # with K = 1, 5, 10).
    out["rsum"] = float(sum(100.0 * out[f"{p}_recall@{k}"] for p, _, _ in DIRECTIONS for k in ks))
    return out


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def recall_at_k(image_vectors, text_vectors, text_image_index, ks: Iterable[int] = DEFAULT_KS, *,
                chunk_bytes: int = CHUNK_BYTES, threads: int | None = None) -> dict[str, float]:
    """Recall@K in both directions, with clip_benchmark's keys and numbers, plus ranks, MRR and RSUM.

    image_vectors (n_images, d), text_vectors (n_texts, d): rows to compare by dot product
    (L2-normalize them for cosine, as CLIP does; fastclip's vectors already are).
    text_image_index (n_texts,): the index of each caption's image. Any number of captions per
    image, at least one each.

    Keys: ``image_retrieval_recall@K`` (text -> image, mean over captions) and
    ``text_retrieval_recall@K`` (image -> text, an image is a hit when any of its captions is in its
    top K; mean over images), each float32-rounded exactly as clip_benchmark's ``.float().mean()``;
    ``{image,text}_retrieval_{mean_rank,median_rank,mrr}`` (1-based rank of the correct image, or of
    the image's best-placed caption); ``rsum``: the recalls in percent, summed over both directions.
    A K at or above the number of candidates gives 1.0 (clip_benchmark's torch.topk raises there).
    """
    ks = _check_ks(ks)
    caption_ranks, image_ranks = retrieval_ranks(image_vectors, text_vectors, text_image_index,
                                                 chunk_bytes=chunk_bytes, threads=threads)
    return summarize(caption_ranks, image_ranks, ks)


def retrieval_metrics(image_vectors, text_vectors, text_image_index, ks: Iterable[int] = DEFAULT_KS, *,
                      chunk_bytes: int = CHUNK_BYTES, threads: int | None = None) -> dict[str, float]:
    """recall_at_k's dict, unchanged, plus mAP, Precision@K and nDCG@K in both directions.

    Same arguments as recall_at_k, and the same ranking (one score matrix; on equal scores the lower
    index first). Added keys, for ``{dir}`` = ``image_retrieval`` (text -> image: a query per caption,
    one relevant image) and ``text_retrieval`` (image -> text: a query per image, its captions
    relevant), each a mean over queries: ``{dir}_mAP``, ``{dir}_precision@K``, ``{dir}_ndcg@K``.
    Definitions in the module doc (trec_eval's). Cost: in the same pass over the scores, one more pair
    of threshold comparisons per score for each further caption per image (4 more for COCO's 5);
    measured at COCO-5k size, 1.25x recall_at_k's time on a quiet machine (CPU time 1.14x) and the same memory
    (benchmarks/bench_retrieval.py --only ranking).
    """
    ks = _check_ks(ks)
    caption_ranks, _, own_ranks, counts = _ranks(image_vectors, text_vectors, text_image_index, every_caption=True,
                                                 chunk_bytes=chunk_bytes, threads=threads)
    starts = np.cumsum(counts) - counts
    out = summarize(caption_ranks, own_ranks[starts], ks)
    image_of = np.repeat(np.arange(len(counts)), counts)
    out.update(_ranking_metrics("image_retrieval", caption_ranks, np.arange(len(caption_ranks)),
                                np.zeros(len(caption_ranks), np.int64), np.ones(len(caption_ranks), np.int64), ks))
    out.update(_ranking_metrics("text_retrieval", own_ranks, image_of, np.arange(len(own_ranks)) - starts[image_of],
                                counts, ks))
    return out


def _ranking_metrics(prefix: str, ranks: np.ndarray, query: np.ndarray, position: np.ndarray, relevant: np.ndarray,
                     ks: tuple[int, ...]) -> dict[str, float]:
    """mAP, P@K, nDCG@K from the 1-based rank of every relevant item: ranks[e] of query[e], the
    position[e]-th relevant item of that query in ranking order (0-based); relevant[q]: how many."""
    r = ranks.astype(np.float64)
    n = len(relevant)
    out = {f"{prefix}_mAP": float(np.mean(np.bincount(query, (position + 1) / r, n) / relevant))}
    for k in ks:
        out[f"{prefix}_precision@{k}"] = float(np.mean(np.bincount(query, r <= k, n) / k))
    gain = 1.0 / np.log2(r + 1.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2.0, min(int(relevant.max()), max(ks)) + 2.0)))
    for k in ks:
        dcg = np.bincount(query, np.where(r <= k, gain, 0.0), n)
        out[f"{prefix}_ndcg@{k}"] = float(np.mean(dcg / ideal[np.minimum(relevant, k) - 1]))
    return out


def reference_metrics(scores, text_image_index, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """retrieval_metrics' dict from a whole score matrix (captions x images), computed the plain way.

    Each query's candidates are sorted (higher score first; equal scores: lower index first) and the
    definitions are applied as written. Slow, and memory for the whole matrix: this is the yardstick
    the banded retrieval_metrics is tested against (on the same scores), not a tool.
    """
    scores = np.asarray(scores, np.float32)
    idx = np.asarray(text_image_index)
    ks = _check_ks(ks)
    n_texts, n_images = scores.shape

    def relevant_ranks(row: np.ndarray, relevant: np.ndarray) -> np.ndarray:
        order = np.lexsort((np.arange(len(row)), -row))
        return np.flatnonzero(relevant[order]) + 1

    queries = {
        "image_retrieval": [relevant_ranks(scores[j], np.arange(n_images) == idx[j]) for j in range(n_texts)],
        "text_retrieval": [relevant_ranks(scores[:, i], idx == i) for i in range(n_images)],
    }
    out = summarize(np.array([r[0] for r in queries["image_retrieval"]]),
                    np.array([r[0] for r in queries["text_retrieval"]]), ks)
    for prefix, ranks in queries.items():
        # AP: the mean, over the relevant items, of the precision at each one's rank
        out[f"{prefix}_mAP"] = float(np.mean([np.mean(np.arange(1, len(r) + 1) / r) for r in ranks]))
        for k in ks:
            out[f"{prefix}_precision@{k}"] = float(np.mean([np.count_nonzero(r <= k) / k for r in ranks]))
        for k in ks:
            out[f"{prefix}_ndcg@{k}"] = float(np.mean([
                np.sum(1 / np.log2(r[r <= k] + 1)) / np.sum(1 / np.log2(np.arange(1, min(len(r), k) + 1) + 1))
                for r in ranks
            ]))
    return out


__all__ = ["DEFAULT_KS", "recall_at_k", "reference_metrics", "retrieval_metrics", "retrieval_ranks", "summarize"]
