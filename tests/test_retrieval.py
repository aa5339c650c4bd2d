"""fastclip.retrieval on arrays: Recall@K against LAION clip_benchmark's own code, exact search, datasets."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from support.clip_benchmark_ref import evaluate, normalized

from fastclip.retrieval import (datasets, metrics, recall_at_k, reference_metrics, retrieval_metrics, retrieval_ranks,
                                search)
from fastclip.retrieval._graphs import session

# LAION's clip_benchmark (the test extra) is the reference of the tests marked with this; the others - ranks by
# hand, search, datasets, scikit-learn's mAP / nDCG - run without it.
needs_clip_benchmark = pytest.mark.skipif(importlib.util.find_spec("clip_benchmark") is None,
                                          reason="clip_benchmark (the test extra) is not installed")


def brute_ranks(images, texts, index):
    """Ranks from the whole score matrix at once (one call of the same graph), lower index first on ties."""
    scores = session("scores").run(None, {"a": np.ascontiguousarray(texts, np.float32),
                                          "b": np.ascontiguousarray(images, np.float32)})[0]
    caption = np.array([
        np.count_nonzero(row > row[i]) + np.count_nonzero(row[:i] == row[i]) + 1 for row, i in zip(scores, index)
    ])
    image = []
    for i in range(len(images)):
        col, own = scores[:, i], np.flatnonzero(index == i)
        top = col[own].max()
        first = own[col[own] == top][0]
        image.append(np.count_nonzero(col > top) + np.count_nonzero(col[:first] == top) + 1)
    return caption, np.array(image)


def uneven(seed: int, n_images: int, dim: int, noise: float, most: int = 7):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, most + 1, n_images)
    index = np.repeat(np.arange(n_images), counts)
    images = rng.standard_normal((n_images, dim)).astype(np.float32)
    texts = (images[index] + noise * rng.standard_normal((len(index), dim))).astype(np.float32)
    return images, texts, index


# ------------------------------------------------------------------------------------- known answer

KNOWN_TEXTS = np.array([
    [0.9, 0.3, 0.1, 0.0],  # image 0: first of 4 -> rank 1
    [0.2, 0.8, 0.5, 0.1],  # image 0: behind images 1 and 2 -> rank 3
    [0.1, 0.5, 0.7, 0.3],  # image 1: behind image 2 -> rank 2
    [0.1, 0.2, 0.9, 0.0],  # image 2: rank 1
    [0.6, 0.1, 0.2, 0.4],  # image 3: behind image 0 -> rank 2
], np.float32)


def test_known_answer_by_hand():
    # images are the basis vectors, so score(caption j, image i) = texts[j, i]
    images, texts, index = np.eye(4, dtype=np.float32), KNOWN_TEXTS, np.array([0, 0, 1, 2, 3])
    caption_ranks, image_ranks = retrieval_ranks(images, texts, index)
    assert caption_ranks.tolist() == [1, 3, 2, 1, 2]
    # columns: image 0's best caption 0.9 is first; image 1's caption (0.5) is behind caption 1 (0.8)
    assert image_ranks.tolist() == [1, 2, 1, 1]
    m = recall_at_k(images, texts, index, ks=(1, 2, 5))
    assert m["image_retrieval_recall@1"] == float(np.float32(2 / 5))
    assert m["image_retrieval_recall@2"] == float(np.float32(4 / 5))
    assert m["image_retrieval_recall@5"] == 1.0
    assert m["text_retrieval_recall@1"] == 0.75 and m["text_retrieval_recall@2"] == 1.0
    assert m["image_retrieval_mean_rank"] == pytest.approx(9 / 5) and m["image_retrieval_median_rank"] == 2.0
    assert m["image_retrieval_mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 2) / 5)
    assert m["text_retrieval_mean_rank"] == 1.25 and m["text_retrieval_median_rank"] == 1.0
    assert m["text_retrieval_mrr"] == pytest.approx(0.875)
    assert m["rsum"] == pytest.approx(100 * (0.4 + 0.8 + 1 + 0.75 + 1 + 1), rel=1e-6)


@needs_clip_benchmark
def test_known_answer_equals_clip_benchmark():
    images, texts, index = np.eye(4, dtype=np.float32), KNOWN_TEXTS, np.array([0, 0, 1, 2, 3])
    # clip_benchmark itself, on the same (normalized) vectors, K up to the 4 images it can take
    ref = evaluate(images, texts, index, ks=(1, 2))
    ours = recall_at_k(normalized(images), normalized(texts), index, ks=(1, 2))
    assert ref == {k: ours[k] for k in ref} and ref["image_retrieval_recall@1"] == ours["image_retrieval_recall@1"]


def test_perfect_and_reversed_synthetic():
    rng = np.random.default_rng(3)
    images = normalized(rng.standard_normal((700, 16)))
    index = np.repeat(np.arange(700), 3)
    m = recall_at_k(images, images[index], index)
    assert all(m[f"{p}_recall@{k}"] == 1.0 for p in ("image_retrieval", "text_retrieval") for k in (1, 5, 10))
    assert m["rsum"] == 600.0 and m["image_retrieval_mean_rank"] == 1.0
    # every caption pointing away from its image: the correct image comes last for each caption
    m = recall_at_k(images, -images[index], index)
    assert m["image_retrieval_recall@10"] == 0.0 and m["image_retrieval_median_rank"] == 700.0


# -------------------------------------------------------------------------------- vs clip_benchmark

@needs_clip_benchmark
@pytest.mark.parametrize("seed,n_images,dim,noise", [(0, 300, 16, 1.2), (1, 200, 8, 0.9), (2, 250, 64, 2.5)])
def test_equal_to_clip_benchmark_uneven_captions(seed, n_images, dim, noise):
    images, texts, index = uneven(seed, n_images, dim, noise)
    ref = evaluate(images, texts, index)
    ni, nt = normalized(images), normalized(texts)
    ours = recall_at_k(ni, nt, index, chunk_bytes=64 * n_images * 4)  # many blocks of 64 captions
    assert {k: ours[k] for k in ref} == ref
    assert 0.05 < ref["image_retrieval_recall@1"] < 0.95  # neither trivial nor hopeless
    assert ours == recall_at_k(ni, nt, index)  # one block or many: same numbers
    caption_ranks, image_ranks = retrieval_ranks(ni, nt, index, chunk_bytes=64 * n_images * 4)
    bc, bi = brute_ranks(ni, nt, index)
    np.testing.assert_array_equal(caption_ranks, bc)
    np.testing.assert_array_equal(image_ranks, bi)


@needs_clip_benchmark
def test_exact_ties_lower_index_first_and_clip_benchmark_within_the_tie_bounds():
    # Duplicated images and captions score exactly equal. We rank the lower index first, always;
    # torch.topk keeps whichever of equal scores its heap happens to hold, so clip_benchmark's numbers
    # on such data can differ from ours, but only within what the ties allow.
    images, texts, index = uneven(5, 300, 8, 0.8, most=5)
    images[1::2] = images[0::2]  # every odd image duplicates the even one before it
    texts[1::3] = texts[0::3][: len(texts[1::3])]
    ni, nt = normalized(images), normalized(texts)
    cr, ir = retrieval_ranks(ni, nt, index, chunk_bytes=100 * 300 * 4)
    bc, bi = brute_ranks(ni, nt, index)
    np.testing.assert_array_equal(cr, bc)
    np.testing.assert_array_equal(ir, bi)
    assert (cr[index % 2 == 1] >= 2).all()  # an odd image's twin, one index lower, always ranks ahead

    s = session("scores").run(None, {"a": nt, "b": ni})[0]
    own = s[np.arange(len(index)), index]
    ahead = (s > own[:, None]).sum(1) + 1  # ties counted behind: the best a tie order can give
    behind = (s >= own[:, None]).sum(1)  # ties counted ahead: the worst
    ref = evaluate(images, texts, index)
    ours = recall_at_k(ni, nt, index)
    spans = []
    for k in (1, 5, 10):
        lo, hi = np.mean(behind <= k), np.mean(ahead <= k)
        assert lo - 1e-7 <= ref[f"image_retrieval_recall@{k}"] <= hi + 1e-7
        assert lo - 1e-7 <= ours[f"image_retrieval_recall@{k}"] <= hi + 1e-7
        spans.append(hi - lo)
    assert max(spans) > 0.01  # the ties do matter here (at the odd K)


def test_exact_recount_path_gives_the_same_ranks(monkeypatch):
    # With no bracket around each image's best caption score, every image goes to the second pass.
    images, texts, index = uneven(7, 300, 16, 1.0)
    ni, nt = normalized(images), normalized(texts)
    expected = retrieval_ranks(ni, nt, index, chunk_bytes=40 * 300 * 4)
    monkeypatch.setattr(metrics, "_BAND", 0.0)
    got = retrieval_ranks(ni, nt, index, chunk_bytes=40 * 300 * 4)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_captions_in_any_order():
    images, texts, index = uneven(11, 400, 16, 1.0)
    ni, nt = normalized(images), normalized(texts)
    order = np.random.default_rng(0).permutation(len(index))
    a = recall_at_k(ni, nt, index)
    b = recall_at_k(ni, nt[order], index[order], chunk_bytes=50 * 400 * 4)
    assert a == b  # no exact ties in these vectors, so the caption order cannot matter


def test_bad_inputs_are_named():
    images, texts, index = uneven(0, 20, 8, 1.0)
    with pytest.raises(ValueError, match="image 3 has no caption"):
        recall_at_k(images, texts[index != 3], index[index != 3])
    with pytest.raises(ValueError, match="outside 0..19"):
        recall_at_k(images, texts, np.where(np.arange(len(index)) == 5, 20, index))
    with pytest.raises(ValueError, match="one image index per caption"):
        recall_at_k(images, texts, index[:-1])
    bad = texts.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="text_vectors row 4 is not finite"):
        recall_at_k(images, bad, index)
    with pytest.raises(ValueError, match="8-d, text vectors 9-d"):
        recall_at_k(images, np.pad(texts, ((0, 0), (0, 1))), index)
    with pytest.raises(ValueError, match="ks must be positive"):
        recall_at_k(images, texts, index, ks=(0, 5))


def test_k_beyond_the_candidates_is_a_hit():
    images, texts, index = uneven(0, 6, 8, 1.0)
    m = recall_at_k(images, texts, index, ks=(100,))
    assert m["image_retrieval_recall@100"] == 1.0 and m["text_retrieval_recall@100"] == 1.0


# ----------------------------------------------------------------------------- mAP, P@K and nDCG@K

def test_ranking_metrics_by_hand():
    # the known-answer set above: score(caption j, image i) = texts[j, i]
    images = np.eye(4, dtype=np.float32)
    texts = np.array([[0.9, 0.3, 0.1, 0.0], [0.2, 0.8, 0.5, 0.1], [0.1, 0.5, 0.7, 0.3], [0.1, 0.2, 0.9, 0.0],
                      [0.6, 0.1, 0.2, 0.4]], np.float32)
    index = np.array([0, 0, 1, 2, 3])
    m = retrieval_metrics(images, texts, index, ks=(1, 2))
    assert {k: m[k] for k in recall_at_k(images, texts, index, ks=(1, 2))} == recall_at_k(images, texts, index, ks=(1, 2))
    g = 1 / np.log2(3)  # the gain at rank 2
    # text -> image, caption ranks 1, 3, 2, 1, 2 (one relevant image each)
    assert m["image_retrieval_mAP"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 2) / 5)
    assert m["image_retrieval_precision@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_precision@2"] == pytest.approx(4 / 5 / 2)
    assert m["image_retrieval_ndcg@2"] == pytest.approx((1 + 0 + g + 1 + g) / 5)
    # image -> text: image 0's captions come 1st and 3rd in its column (caption 4 scores 0.6 between),
    # image 1's only caption 2nd, images 2 and 3 first
    assert m["text_retrieval_mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2 + 1 + 1) / 4)
    assert m["text_retrieval_precision@1"] == pytest.approx(3 / 4)
    assert m["text_retrieval_precision@2"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2 + 1 / 2) / 4)
    assert m["text_retrieval_ndcg@2"] == pytest.approx((1 / (1 + g) + g + 1 + 1) / 4)
    assert m["text_retrieval_ndcg@1"] == pytest.approx(3 / 4)
    assert m == pytest.approx(reference_metrics(texts, index, ks=(1, 2)), rel=1e-12)


def tie_broken(scores: np.ndarray) -> np.ndarray:
    """Scores with every tie broken the documented way (lower index first), for scikit-learn, which
    averages over ties instead: each row's candidates get minus their position in a stable sort."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = np.empty(scores.shape, np.float64)
    np.put_along_axis(out, order, -np.arange(scores.shape[1], dtype=np.float64)[None, :].repeat(len(scores), 0), 1)
    return out


def sklearn_metrics(scores: np.ndarray, index: np.ndarray, ks, break_ties: bool = False) -> dict[str, float]:
    """mAP and nDCG@K by scikit-learn (a query per caption, then per image); P@K from a stable argsort."""
    skm = pytest.importorskip("sklearn.metrics")
    out = {}
    for prefix, s, relevant in (("image_retrieval", scores, np.arange(scores.shape[1])[None, :] == index[:, None]),
                                ("text_retrieval", scores.T, index[None, :] == np.arange(scores.shape[1])[:, None])):
        s = tie_broken(s) if break_ties else s
        out[f"{prefix}_mAP"] = np.mean([skm.average_precision_score(t, q) for t, q in zip(relevant, s)])
        top = np.argsort(-s, axis=1, kind="stable")
        for k in ks:
            out[f"{prefix}_precision@{k}"] = np.mean(np.take_along_axis(relevant, top[:, :k], 1).sum(1) / k)
            out[f"{prefix}_ndcg@{k}"] = skm.ndcg_score(relevant, s, k=k)
    return out


@pytest.mark.parametrize("seed,n_images,dim,noise", [(0, 120, 16, 1.2), (2, 100, 64, 2.5)])
def test_ranking_metrics_equal_scikit_learn_and_the_reference(seed, n_images, dim, noise):
    images, texts, index = uneven(seed, n_images, dim, noise)  # 1-7 captions per image
    ni, nt = normalized(images), normalized(texts)
    ks = (1, 5, 10, 50)
    fast = retrieval_metrics(ni, nt, index, ks, chunk_bytes=64 * n_images * 4)  # many blocks
    assert fast == retrieval_metrics(ni, nt, index, ks)  # one block or many: same numbers
    assert {k: fast[k] for k in recall_at_k(ni, nt, index, ks)} == recall_at_k(ni, nt, index, ks)
    scores = session("scores").run(None, {"a": nt, "b": ni})[0]
    # no ties within a query here: scikit-learn reads the raw scores
    assert all((np.diff(np.sort(s, axis=1), axis=1) > 0).all() for s in (scores, scores.T))
    ref = reference_metrics(scores, index, ks)
    assert list(fast) == list(ref) and fast == pytest.approx(ref, rel=1e-12, abs=1e-15)
    sk = sklearn_metrics(scores, index, ks)
    assert {k: fast[k] for k in sk} == pytest.approx(sk, rel=1e-9)
    assert 0.05 < fast["text_retrieval_mAP"] < 0.95 and fast["text_retrieval_mAP"] != fast["text_retrieval_mrr"]


def test_ranking_metrics_with_exact_ties_lower_index_first():
    images, texts, index = uneven(5, 150, 8, 0.8, most=5)
    images[1::2] = images[0::2]  # every odd image duplicates the even one before it
    texts[1::3] = texts[0::3][: len(texts[1::3])]  # and many captions duplicate another
    ni, nt = normalized(images), normalized(texts)
    ks = (1, 2, 5, 10)
    fast = retrieval_metrics(ni, nt, index, ks, chunk_bytes=50 * 150 * 4)
    scores = session("scores").run(None, {"a": nt, "b": ni})[0]
    ref = reference_metrics(scores, index, ks)
    assert fast == pytest.approx(ref, rel=1e-12, abs=1e-15)
    sk = sklearn_metrics(scores, index, ks, break_ties=True)
    assert {k: fast[k] for k in sk} == pytest.approx(sk, rel=1e-9)
    # the ties matter: scikit-learn's own tie handling (averaging over tied candidates) differs
    assert sklearn_metrics(scores, index, ks)["image_retrieval_ndcg@1"] != pytest.approx(fast["image_retrieval_ndcg@1"])


def brute_caption_ranks(images, texts, index):
    """Each caption's rank among all captions for its own image (one call of the same graph)."""
    scores = session("scores").run(None, {"a": texts, "b": images})[0]
    return np.array([np.count_nonzero(scores[:, i] > scores[j, i]) + np.count_nonzero(scores[:j, i] == scores[j, i]) + 1
                     for j, i in enumerate(index)])


@pytest.mark.parametrize("band", [metrics._BAND, 0.0])  # 0: every image through the exact recount
def test_every_captions_rank_in_its_column(monkeypatch, band):
    images, texts, index = uneven(9, 150, 16, 1.0, most=9)
    # one image with 40 more captions: levels over a single column
    more = images[3] + np.random.default_rng(9).standard_normal((40, 16)).astype(np.float32)
    texts, index = np.concatenate([more[:20], texts, more[20:]]), np.concatenate([[3] * 20, index, [3] * 20])
    ni, nt = normalized(images), normalized(texts)
    monkeypatch.setattr(metrics, "_BAND", band)
    _, order, ranks, counts = metrics._ranks(ni, nt, index, every_caption=True, chunk_bytes=33 * 150 * 4, threads=None)
    got = np.empty(len(index), np.int64)
    got[order] = ranks
    np.testing.assert_array_equal(got, brute_caption_ranks(ni, nt, index))
    np.testing.assert_array_equal(counts, np.bincount(index))
    assert (np.diff(ranks)[np.diff(index[order]) == 0] > 0).all()  # each image's captions in ranking order


def test_ranking_metrics_k_beyond_the_candidates():
    images, texts, index = uneven(0, 6, 8, 1.0)
    m = retrieval_metrics(images, texts, index, ks=(100,))
    # trec_eval: hits in the top K over K, whatever the number of candidates
    assert m["image_retrieval_precision@100"] == pytest.approx(1 / 100)
    assert m["text_retrieval_precision@100"] == pytest.approx(len(index) / 6 / 100)
    scores = session("scores").run(None, {"a": texts, "b": images})[0]
    assert m == pytest.approx(reference_metrics(scores, index, ks=(100,)), rel=1e-12)
    with pytest.raises(ValueError, match="image 3 has no caption"):
        retrieval_metrics(images, texts[index != 3], index[index != 3])


# -------------------------------------------------------------------------------------------- search

def brute_search(q, c, k):
    scores = q @ c.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("block_rows", [None, 1000, 777])
def test_search_matches_brute_force(block_rows):
    rng = np.random.default_rng(0)
    corpus = normalized(rng.standard_normal((5000, 32)))
    queries = normalized(rng.standard_normal((37, 32)))
    corpus[[100, 2000, 4000]] = corpus[4000]  # exact ties across blocks: corpus order
    queries[3] = corpus[4000]
    indices, scores = search(queries, corpus, 10, block_rows=block_rows)
    ref_i, ref_s = brute_search(queries, corpus, 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    differ = indices != ref_i
    # Indices equal except where numpy's and onnxruntime's float32 sums round differently: only between
    # candidates whose exact (float64) scores are within float32 rounding of each other.
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    gap = np.abs(np.take_along_axis(exact, indices, 1) - np.take_along_axis(exact, ref_i, 1))
    assert gap[differ].max(initial=0) < 1e-6, gap[differ].max(initial=0)
    assert differ.mean() < 0.01
    assert indices[3, :3].tolist() == [100, 2000, 4000] and indices.dtype == np.int64


@pytest.mark.parametrize("block_rows", [None, 1000, 777])
def test_search_is_exact_where_arithmetic_is(block_rows):
    """Small-integer vectors: every score is an exact float32 whatever the summation order, so "exact"
    can be checked literally - the same rows as a full stable sort, every tie in corpus order."""
    rng = np.random.default_rng(2)
    corpus = rng.integers(-3, 4, (5000, 32)).astype(np.float32)
    queries = rng.integers(-3, 4, (41, 32)).astype(np.float32)
    indices, scores = search(queries, corpus, 25, block_rows=block_rows)
    ref_i, ref_s = brute_search(queries, corpus, 25)
    assert (ref_s[:, :-1] == ref_s[:, 1:]).mean() > 0.3  # ties are common here, so their order is tested
    np.testing.assert_array_equal(scores, ref_s)
    np.testing.assert_array_equal(indices, ref_i)


def test_search_memory_mapped_file_and_single_query(tmp_path):
    rng = np.random.default_rng(1)
    corpus = normalized(rng.standard_normal((3000, 24)))
    np.save(tmp_path / "corpus.npy", corpus)
    q = corpus[1234] + 0.01
    i_path, s_path = search(q, str(tmp_path / "corpus.npy"), 5, block_rows=500)
    i_map, s_map = search(q, np.load(tmp_path / "corpus.npy", mmap_mode="r"), 5, block_rows=500)
    assert i_path.shape == (5,) and i_path[0] == 1234
    np.testing.assert_array_equal(i_path, i_map)
    np.testing.assert_array_equal(s_path, s_map)
    ref_i, _ = brute_search(q[None], corpus, 5)
    assert i_path.tolist() == ref_i[0].tolist()
    # float64 corpus: converted a block at a time
    i64, _ = search(q, corpus.astype(np.float64), 5, block_rows=500)
    assert i64.tolist() == i_path.tolist()


def test_search_k_and_errors():
    corpus = np.eye(4, dtype=np.float32)
    i, _ = search(np.ones((2, 4), np.float32), corpus, 10)
    assert i.shape == (2, 4) and i[0].tolist() == [0, 1, 2, 3]  # all tie: corpus order
    with pytest.raises(ValueError, match="k must be a positive"):
        search(corpus, corpus, 0)
    with pytest.raises(ValueError, match="queries are 3-d, the corpus is 4-d"):
        search(np.ones(3), corpus, 1)
    bad = np.ones((3000, 4), np.float32)
    bad[2222, 1] = np.nan
    with pytest.raises(ValueError, match="corpus row 2222 is not finite"):
        search(np.ones(4), bad, 3, block_rows=1000)


def test_shipped_graphs_are_what_onnx_builds():
    # The runtime reads scores.onnx and topk.onnx as package data; the export extra's `onnx` builds them.
    pytest.importorskip("onnx")
    from fastclip.retrieval import _graphs
    from fastclip_export.retrieval_graphs import build

    built = build()
    assert sorted(built) == sorted(_graphs.NAMES)
    for name, data in built.items():
        assert _graphs.graph(name) == data, (
            f"fastclip/retrieval/{name}.onnx is stale: run `python -m fastclip_export.retrieval_graphs`")
    with pytest.raises(ValueError, match="unknown graph 'gemm'"):
        _graphs.graph("gemm")


# ------------------------------------------------------------------------------------------ datasets

def test_datasets_csv_tsv_jsonl_karpathy(tmp_path):
    rows = [("a.jpg", "a cat"), ("b.jpg", "a dog"), ("a.jpg", "a small cat"), ("c/d.png", "a bird, flying")]
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "image"])
        w.writerows([(c, i) for i, c in rows])
    with open(tmp_path / "d.tsv", "w") as f:
        f.write("image\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in rows))
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
    karpathy = {"images": [
        {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a cat"}, {"raw": "a small cat"}]},
        {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "a dog"}]},
        {"filename": "z.jpg", "split": "train", "sentences": [{"raw": "not in the test split"}]},
        {"filepath": "c", "filename": "d.png", "split": "test", "sentences": [{"raw": "a bird, flying"}]},
    ]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(karpathy))
    for name in ("d.csv", "d.tsv", "d.jsonl"):
        d = datasets.load_captions(tmp_path / name)
        assert d.images == [str(tmp_path / p) for p in ("a.jpg", "b.jpg", "c/d.png")]
        assert d.captions == [c for _, c in rows] and d.text_image_index.tolist() == [0, 1, 0, 2]
    k = datasets.load_captions(tmp_path / "dataset_flickr30k.json", images_root="/data/flickr")
    assert k.images == ["/data/flickr/a.jpg", "/data/flickr/b.jpg", "/data/flickr/c/d.png"]
    assert k.captions == ["a cat", "a small cat", "a dog", "a bird, flying"] and k.text_image_index.tolist() == [0, 0, 1, 2]
    assert datasets.load_captions(tmp_path / "dataset_flickr30k.json", split="train").captions == ["not in the test split"]
    with pytest.raises(datasets.DatasetError, match=r"no images in split 'val' \(splits present: \['test', 'train'\]\)"):
        datasets.load_captions(tmp_path / "dataset_flickr30k.json", split="val")
    fewer = k.without_images({1})
    assert fewer.captions == ["a cat", "a small cat", "a bird, flying"] and fewer.text_image_index.tolist() == [0, 0, 1]


def test_dataset_errors_name_file_and_row(tmp_path):
    (tmp_path / "x.csv").write_text("path,text\na.jpg,hello\n")
    with pytest.raises(datasets.DatasetError, match=r"x.csv: no 'image' or 'caption' column"):
        datasets.load_captions(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("image,caption\na.jpg,hello\nb.jpg,\n")
    with pytest.raises(datasets.DatasetError, match=r"y.csv: line 3: empty or missing caption"):
        datasets.load_captions(tmp_path / "y.csv")
    with pytest.raises(datasets.DatasetError, match="unknown dataset format"):
        datasets.load_captions(tmp_path / "y.txt")


def test_dataset_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a cat", "a dog", "a small cat"], "image": ["a.jpg", "b.jpg", "a.jpg"],
                             "extra": [1, 2, 3]}), tmp_path / "d.parquet")
    d = datasets.load_captions(tmp_path / "d.parquet", images_root="/imgs")
    assert d.images == ["/imgs/a.jpg", "/imgs/b.jpg"] and d.text_image_index.tolist() == [0, 1, 0]
    assert d.captions == ["a cat", "a dog", "a small cat"]
