"""Cross-modal retrieval quality: Recall@K in both directions, ranks and MRR, from vectors.

The protocol and the key names are LAION clip_benchmark's (`clip_benchmark/metrics/zeroshot_retrieval.py`):

* ``image_retrieval_recall@K``: text -> image. Each caption has exactly one correct image; a caption
  is a hit when that image is among its K best-scoring images. Mean over captions.
* ``text_retrieval_recall@K``: image -> text. An image is a hit when ANY of its captions is among its
  K best-scoring captions. Mean over images.

Scores are dot products, ``text_vectors @ image_vectors.T`` (cosines for L2-normalized vectors, which
is what clip_benchmark scores). Both directions are read from the same score matrix, as clip_benchmark
reads ``scores`` and ``scores.T``, computed once, a block of captions at a time, so memory stays
bounded (about 64 MB of scores at a time by default) for any number of captions.

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


def retrieval_ranks(image_vectors, text_vectors, text_image_index, *, chunk_bytes: int = CHUNK_BYTES,
                    threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks in both directions, from one score matrix computed a block of captions at a time.

    Returns (caption_ranks, image_ranks): caption_ranks[j] is where caption j's image comes among all
    images for caption j (text -> image); image_ranks[i] is where image i's best-placed caption comes
    among all captions for image i (image -> text). Exact ties: lower index first (see the module doc).
    """
    images = _as_matrix(image_vectors, "image_vectors")
    texts = _as_matrix(text_vectors, "text_vectors")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image vectors are {images.shape[1]}-d, text vectors {texts.shape[1]}-d")
    n_images, n_texts = len(images), len(texts)
    idx = _check_index(text_image_index, n_texts, n_images)

    # Image -> text needs, for each image, its best caption's score before the captions of other
    # images can be counted against it, and those captions may come in any block. An estimate of
    # that score (float64, another summation order) only brackets it: a band [lo, hi] around the
    # estimate, many times wider than the float32 rounding of a d-term dot product (measured: a few
    # 1e-7 for unit vectors, d = 512; the band is 4 sqrt(d) 2^-24 |a| |b|, ~5e-6). Scores above the
    # band are counted as the blocks stream by, the few inside it are kept with their caption index,
    # and once the image's best score in the matrix is known they are compared to it, entry by entry.
    # The bracket is checked at the end; an image outside it is recounted exactly in another pass.
    t64 = texts.astype(np.float64)
    i64 = images.astype(np.float64)
    pair = np.einsum("jd,jd->j", t64, i64[idx])
    estimate = np.full(n_images, -np.inf)
    np.maximum.at(estimate, idx, pair)
    tnorm = np.zeros(n_images)
    np.maximum.at(tnorm, idx, np.linalg.norm(t64, axis=1))
    eps = _BAND * images.shape[1] ** 0.5 * 2.0**-24 * np.linalg.norm(i64, axis=1) * tnorm + 1e-30
    lo = (estimate - eps).astype(np.float32)[None, :]
    hi = (estimate + eps).astype(np.float32)[None, :]
    del t64, i64, pair

    caption_ranks = np.empty(n_texts, np.int64)
    correct_all = np.empty(n_texts, np.float32)  # each caption's score with its own image (matrix entries)
    above = np.zeros(n_images, np.int64)  # captions scoring above the band
    band_img, band_txt, band_val = [], [], []

    scorer = session("scores", threads)
    rows = max(1, min(n_texts, chunk_bytes // (4 * n_images), 65535))  # uint16 column counts below
    for start in range(0, n_texts, rows):
        stop = min(n_texts, start + rows)
        scores = scorer.run(None, {"a": texts[start:stop], "b": images})[0]
        local = np.arange(stop - start)
        own = idx[start:stop]
        correct = scores[local, own]
        correct_all[start:stop] = correct

        # text -> image: images above the caption's own, plus equal ones with a lower index
        mask = scores > correct[:, None]
        ahead = np.count_nonzero(mask, axis=1)
        np.equal(scores, correct[:, None], out=mask)
        ties = np.count_nonzero(mask, axis=1) > 1
        for r in np.flatnonzero(ties):
            ahead[r] += np.count_nonzero(mask[r, : own[r]])
        caption_ranks[start:stop] = ahead + 1

        # image -> text: count what is above the band, keep what is inside it
        np.greater(scores, hi, out=mask)
        counted = np.add.reduce(mask.view(np.uint8), axis=0, dtype=np.uint16)
        above += counted
        np.greater_equal(scores, lo, out=mask)
        cols = np.flatnonzero(np.add.reduce(mask.view(np.uint8), axis=0, dtype=np.uint16) != counted)
        if len(cols):
            sub = scores[:, cols]
            r, c = np.nonzero((sub >= lo[0, cols]) & (sub <= hi[0, cols]))
            band_img.append(cols[c])
            band_txt.append(r + start)
            band_val.append(sub[r, c])
        del scores, mask

    # each image's best caption score and the lowest caption index reaching it
    best = np.full(n_images, -np.inf, np.float32)
    np.maximum.at(best, idx, correct_all)
    first = np.full(n_images, n_texts, np.int64)
    reach = np.flatnonzero(correct_all == best[idx])
    np.minimum.at(first, idx[reach], reach)

    image_ranks = above + 1
    if band_img:
        bi, bt, bv = (np.concatenate(x) for x in (band_img, band_txt, band_val))
        ahead = (bv > best[bi]) | ((bv == best[bi]) & (bt < first[bi]))
        image_ranks += np.bincount(bi[ahead], minlength=n_images)
    outside = np.flatnonzero((best < lo[0]) | (best > hi[0]))
    if len(outside):  # never observed: an exact second pass over those images' columns
        image_ranks[outside] = _recount(texts, images, idx, outside, scorer, rows, chunk_bytes)
    return caption_ranks, image_ranks


def _recount(texts, images, idx, which, scorer, rows, chunk_bytes) -> np.ndarray:
    """Ranks of images `which` from their full columns, computed in the same blocks as the main pass."""
    ranks = np.empty(len(which), np.int64)
    group = max(1, chunk_bytes // (4 * len(texts)))  # columns held at once
    for g in range(0, len(which), group):
        part = which[g : g + group]
        columns = np.concatenate([
            scorer.run(None, {"a": texts[s : s + rows], "b": images})[0][:, part] for s in range(0, len(texts), rows)
        ])
        for n, i in enumerate(part):
            column = columns[:, n]
            own = np.flatnonzero(idx == i)
            top = column[own].max()
            first = own[column[own] == top][0]
            ranks[g + n] = np.count_nonzero(column > top) + np.count_nonzero(column[:first] == top) + 1
    return ranks


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


__all__ = ["DEFAULT_KS", "recall_at_k", "retrieval_ranks", "summarize"]
