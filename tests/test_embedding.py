"""Runtime end to end: parity with the torch reference, normalization, laziness, inputs, errors."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fastclip import CLIP, ImageEmbedding, ImageError, ModelError, TextEmbedding, TextError
from support.parity import assert_parity
from support.photos import SENTENCES, cosines, photo_array, write_photos


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def _open_clip_transform(spec_size=224):
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    return open_clip.image_transform(spec_size, is_train=False)


def test_hf_export_matches_transformers(tiny_hf_checkpoint, tiny_hf_export, photo_files):
    """HF-sourced model: runtime vs transformers CLIPModel fed open_clip's pixels and its own tokenizer."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_hf_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_checkpoint)
    transform = _open_clip_transform()
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p)) for p in photo_files])
        ref_img = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        ids = tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ref_txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).pooler_output.numpy()

    got_img = np.stack(list(ImageEmbedding(tiny_hf_export, exif_transpose=False).embed(photo_files, normalize=False)))
    got_txt = np.stack(list(TextEmbedding(tiny_hf_export).embed(SENTENCES, normalize=False)))
    assert_parity(got_img, ref_img, "transformers CLIP image")
    assert_parity(got_txt, ref_txt, "transformers CLIP text")


def test_open_clip_export_matches_open_clip(tiny_openclip_model, tiny_openclip_export, photo_files):
    """open_clip-sourced model: runtime vs open_clip's model, preprocess and tokenizer."""
    import torch

    model, preprocess, tokenizer = tiny_openclip_model
    with torch.no_grad():
        ref_img = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in photo_files])).numpy()
        ref_txt = model.encode_text(tokenizer(SENTENCES)).numpy()
    got_img = np.stack(list(ImageEmbedding(tiny_openclip_export, exif_transpose=False).embed(photo_files, normalize=False)))
    got_txt = np.stack(list(TextEmbedding(tiny_openclip_export).embed(SENTENCES, normalize=False)))
    assert_parity(got_img, ref_img, "open_clip ViT image")
    assert_parity(got_txt, ref_txt, "open_clip text")


def test_both_towers_normalized_by_default(tiny_openclip_export, photo_files):
    text = TextEmbedding(tiny_openclip_export)
    vectors = np.stack(list(text.embed(SENTENCES + SENTENCES[:3])))
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES) + 3, text.dim)
    np.testing.assert_allclose((vectors * vectors).sum(1), 1.0, atol=1e-6)
    # Identical inputs give identical vectors, whatever batch they land in.
    np.testing.assert_array_equal(vectors[:3], vectors[-3:])
    raw = np.stack(list(text.embed(SENTENCES, normalize=False)))
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-3  # raw features really are unnormalized
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vectors[: len(SENTENCES)], atol=1e-6)

    images = np.stack(list(ImageEmbedding(tiny_openclip_export).embed(photo_files)))
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-6)


def test_batch_size_does_not_change_vectors(tiny_openclip_export, photo_files):
    model = ImageEmbedding(tiny_openclip_export)
    one = np.stack(list(model.embed(photo_files, batch_size=1)))
    many = np.stack(list(model.embed(photo_files, batch_size=5)))
    assert cosines(one, many).min() >= 0.999999


def test_length_bucketing_and_concurrent_runs_keep_vectors_in_order(tiny_openclip_export, caplog, monkeypatch):
    """Large text jobs are sorted by length and run concurrently on a one-thread session; every
    vector must still be its own text's, equal to embedding that text alone."""
    import logging
    import random

    import fastclip.providers

    monkeypatch.setattr(fastclip.providers, "_announced", set())  # earlier tests announced this tower already
    caplog.set_level(logging.INFO, logger="fastclip")
    rng = random.Random(0)
    words = " ".join(SENTENCES).split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(600)]
    assert TextEmbedding(tiny_openclip_export).concurrent_runs == (os.cpu_count() or 1)
    assert CLIP(tiny_openclip_export, concurrent_runs=1).texts.concurrent_runs == 1
    bulk = TextEmbedding(tiny_openclip_export, concurrent_runs=2)
    serial = TextEmbedding(tiny_openclip_export, concurrent_runs=1)
    got = np.stack(list(bulk.embed(texts, batch_size=64)))
    assert bulk._runner._second is not None  # the one-thread session ran
    plain = np.stack(list(serial.embed(texts, batch_size=64)))
    assert serial._runner._second is None
    alone = np.stack([next(serial.embed([t])) for t in texts[:60]])
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[:60], alone, rtol=0, atol=1e-6)
    assert cosines(got[:-1], got[1:]).min() < 0.999  # different texts, different vectors: nothing collapsed

    short = TextEmbedding(tiny_openclip_export, concurrent_runs=2)
    list(short.embed(texts[:40]))
    assert short._runner._second is None  # a short job keeps the multi-threaded session (latency)
    lines = [r.getMessage() for r in caplog.records if r.name == "fastclip" and "text tower" in r.getMessage()]
    # One line for the text tower, from the first object; neither the second session nor the later
    # objects announce it again.
    assert len(lines) == 1 and lines[0].startswith("fastclip: text tower on CPU") and lines[0].endswith("fp32"), lines


def test_embed_is_lazy_and_streams(tiny_openclip_export):
    """The input is pulled as needed, not drained up front; an endless stream works."""
    model = ImageEmbedding(tiny_openclip_export, workers=2)
    pulled = []
    image = photo_array("chelsea")

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield image

    stream = model.embed(endless(), batch_size=4)
    assert pulled == []  # nothing happens before the first vector is asked for
    first = list(itertools.islice(stream, 6))
    assert len(first) == 6
    # Six vectors need two batches of four; at most two more batches are read ahead.
    assert len(pulled) <= 2 * 4 + 2 * 4
    stream.close()


def test_mixed_input_types_give_the_same_vector(tiny_openclip_export, photo_files):
    path = photo_files[0]
    pil = Image.open(path)
    pil.load()
    items = [str(path), path, path.read_bytes(), io.BytesIO(path.read_bytes()), pil, np.asarray(pil.convert("RGB"))]
    vectors = np.stack(list(ImageEmbedding(tiny_openclip_export).embed(items, batch_size=4)))
    for v in vectors[1:]:
        np.testing.assert_allclose(v, vectors[0], atol=1e-6)


def test_bad_image_raises_naming_index_and_path(tiny_openclip_export, photo_files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    items = [photo_files[0], bad, photo_files[1]]
    model = ImageEmbedding(tiny_openclip_export)
    with pytest.raises(ImageError) as info:
        list(model.embed(items))
    assert info.value.index == 1 and str(bad) in str(info.value)

    seen = []
    out = list(model.embed(items, errors="skip", on_error=seen.append))
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert [e.index for e in seen] == [1]
    good = list(model.embed([photo_files[0], photo_files[1]]))
    np.testing.assert_allclose(out[2], good[1], atol=1e-6)  # nothing shifted against its input


@pytest.mark.parametrize("item", [None, 3])
def test_wrong_input_type_is_a_type_error_naming_the_index(tiny_openclip_export, photo_files, item):
    with pytest.raises(TypeError, match="#2|index 2"):
        list(ImageEmbedding(tiny_openclip_export).embed([photo_files[0], photo_files[1], item]))
    # errors="skip" yields None for it instead (issue 13): tests/test_hostile.py
    with pytest.raises(TypeError, match="#1|index 1"):
        list(TextEmbedding(tiny_openclip_export).embed(["a dog", item]))


def test_long_text_truncates_or_raises(tiny_openclip_export):
    text = TextEmbedding(tiny_openclip_export)
    long = "word " * 200
    ids = text.tokenize([long])
    assert ids.shape[1] == 77 and ids[0, -1] == text.spec.eos_token_id
    with pytest.raises(TextError, match="#1"):
        list(text.embed(["short", long], truncate=False))


def test_classify_equals_torch_with_the_models_logit_scale(tiny_openclip_export, tiny_openclip_model, photo_files):
    """Probabilities against open_clip's encoders with torch's softmax over logit_scale.exp() * cosines,
    every step of fastclip's pipeline on one side (decode, resize, tokenize, both towers, similarity, scorer).
    Measured max |diff| 1.2e-7 (float32 rounding); the bound 1e-6 is 8x that, and far under what a logit
    scale off by 1 % moves (2.1e-3) or cosines in float16 (2.9e-4), measured with logit_scale 14.3 here."""
    import torch

    model, preprocess, tokenizer = tiny_openclip_model
    clip = CLIP(tiny_openclip_export, exif_transpose=False)
    labels = ["cat", "rocket", "astronaut"]
    probs = clip.classify(photo_files[:3], labels)
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in photo_files[:3]]), normalize=True)
        text = model.encode_text(tokenizer([f"a photo of a {x}." for x in labels]), normalize=True)
        want = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1).numpy()
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    assert clip.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert clip.logit_scale == pytest.approx(json.loads((tiny_openclip_export / "fastclip.json").read_text())["logit_scale"])


def test_precision_int8_is_never_picked_silently(tiny_variants_export):
    """The folder holds int8 (and fp16): fp32 unless asked, for both towers and the pair."""
    assert {"fp32", "int8"} <= set(ImageEmbedding(tiny_variants_export).manifest.vision.files)
    assert ImageEmbedding(tiny_variants_export).precision == "fp32"
    assert TextEmbedding(tiny_variants_export).precision == "fp32"
    assert CLIP(tiny_variants_export).images.precision == CLIP(tiny_variants_export).texts.precision == "fp32"
    assert ImageEmbedding(tiny_variants_export, precision="int8").precision == "int8"


def test_precision_missing_from_the_folder_is_refused(tiny_openclip_export):
    with pytest.raises(ModelError, match="precision 'int8' not in this model folder"):
        ImageEmbedding(tiny_openclip_export, precision="int8")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_or_corrupt_model_file_fails_before_any_work(tiny_openclip_export, tmp_path):
    folder = _copy(tiny_openclip_export, tmp_path / "m")
    (folder / "vision" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        ImageEmbedding(folder)

    folder = _copy(tiny_openclip_export, tmp_path / "m2")
    model = folder / "text" / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        TextEmbedding(folder)

    # One flipped byte deep in the weights loads fine; only verify=True (the manifest's sha256) catches it.
    folder = _copy(tiny_openclip_export, tmp_path / "m4")
    model = folder / "text" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        TextEmbedding(folder, verify=True)

    # Same size, garbage content: onnxruntime refuses it and we say which file.
    folder = _copy(tiny_openclip_export, tmp_path / "m3")
    model = folder / "text" / "model.onnx"
    model.write_bytes(b"\x00" * model.stat().st_size)
    with pytest.raises(ModelError, match="could not load"):
        TextEmbedding(folder)


def test_newer_manifest_and_dim_mismatch_are_refused(tiny_openclip_export, tmp_path):
    folder = _copy(tiny_openclip_export, tmp_path / "m")
    manifest = json.loads((folder / "fastclip.json").read_text())
    (folder / "fastclip.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelError, match="newer"):
        ImageEmbedding(folder)
    (folder / "fastclip.json").write_text(json.dumps({**manifest, "embed_dim": manifest["embed_dim"] + 1}))
    with pytest.raises(ModelError, match="dim"):
        ImageEmbedding(folder)
    (folder / "fastclip.json").unlink()
    with pytest.raises(ModelError, match="no manifest|neither"):
        ImageEmbedding(folder)


# ----------------------------------------------------------------------------- batch call, tuning, lifetime

def test_embed_batch_maps_rows_back_to_inputs(tiny_openclip_export, photo_files, tmp_path):
    """The batch call under the generators: vectors of the good images, failures by input index."""
    from fastclip import EmbeddingBatch

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    model = ImageEmbedding(tiny_openclip_export)
    items = [photo_files[0], bad, photo_files[1], photo_files[2]]
    batch = model.embed_batch(items, start_index=10)
    assert isinstance(batch, EmbeddingBatch) and batch.count == 4 and batch.vectors.shape == (3, model.dim)
    assert list(batch.ok) == [True, False, True, True] and list(batch.indices) == [10, 12, 13]
    assert set(batch.failures) == {11} and str(bad) in str(batch.failures[11]) and batch.failures[11].index == 11
    streamed = list(model.embed(items, batch_size=3, errors="skip"))
    rows = list(batch.rows())
    assert rows[1] is None and streamed[1] is None
    for a, b in zip(rows, streamed):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    raw = model.embed_batch(items[:1], normalize=False).vectors
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    # batch_size: images per model run (the pool passes it for both towers alike); same rows, same failures.
    runs = model.embed_batch(items, start_index=10, batch_size=2)
    assert runs.failures.keys() == batch.failures.keys()
    np.testing.assert_allclose(runs.vectors, batch.vectors, rtol=0, atol=1e-6)

    text = TextEmbedding(tiny_openclip_export)
    texts = text.embed_batch(SENTENCES, start_index=5)
    assert isinstance(texts, EmbeddingBatch) and texts.count == len(SENTENCES) and not texts.failures
    assert texts.vectors.shape == (len(SENTENCES), text.dim) and texts.vectors.dtype == np.float32
    np.testing.assert_array_equal(texts.vectors, np.stack(list(text.embed(SENTENCES))))
    # One text over the context with truncate=False, one that is not a str: both land in failures, by
    # input index, and the others keep exactly the vectors they get alone.
    mixed = text.embed_batch(["short", "word " * 200, None, SENTENCES[0]], start_index=5, truncate=False)
    assert sorted(mixed.failures) == [6, 7] and list(mixed.indices) == [5, 8]
    assert isinstance(mixed.failures[6], TextError) and "77" in str(mixed.failures[6])
    assert isinstance(mixed.failures[7], TypeError) and mixed.failures[7].index == 7
    np.testing.assert_allclose(mixed.vectors, text.embed_batch(["short", SENTENCES[0]]).vectors, atol=1e-6)
    with pytest.raises(TextError, match="#1"):
        list(text.embed(["short", "word " * 200], truncate=False))
    skipped = list(text.embed(["short", "word " * 200, "short"], truncate=False, errors="skip"))
    assert skipped[1] is None and np.array_equal(skipped[0], skipped[2])
    batches = list(text.embed_batches(SENTENCES * 3, batch_size=4))
    assert [b.count for b in batches] == [4] * (len(SENTENCES) * 3 // 4) + ([len(SENTENCES) * 3 % 4] if len(SENTENCES) * 3 % 4 else [])
    assert [b.start_index for b in batches] == list(range(0, len(SENTENCES) * 3, 4))
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), np.stack(list(text.embed(SENTENCES * 3, batch_size=4))))
    image_batches = list(model.embed_batches(items, batch_size=3, errors="skip"))
    assert [(b.start_index, b.count, sorted(b.failures)) for b in image_batches] == [(0, 3, [1]), (3, 1, [])]
    with pytest.raises(ImageError, match="#1"):
        list(model.embed_batches(items, batch_size=3))


def test_tuning_is_public_and_old_arguments_still_work(tiny_openclip_export):
    from fastclip import Tuning

    texts = [" ".join(SENTENCES[i % len(SENTENCES)].split()[: 1 + i % 9]) for i in range(300)]
    default = TextEmbedding(tiny_openclip_export, concurrent_runs=1)
    unsorted = TextEmbedding(tiny_openclip_export, tuning=Tuning(text_bucket_window=0, concurrent_runs=1))
    small_runs = TextEmbedding(tiny_openclip_export, tuning=Tuning(text_run_rows=8, concurrent_runs=1))
    ref = np.stack(list(default.embed(texts, batch_size=64)))
    for other in (unsorted, small_runs):
        np.testing.assert_allclose(np.stack(list(other.embed(texts, batch_size=64))), ref, rtol=0, atol=1e-6)
    assert ImageEmbedding(tiny_openclip_export, workers=0).tuning.decode_workers == 0
    assert ImageEmbedding(tiny_openclip_export, tuning=Tuning(decode_workers=3)).workers == 3
    assert TextEmbedding(tiny_openclip_export, tuning=Tuning(concurrent_runs=3)).concurrent_runs == 3
    with pytest.raises(ValueError, match="text_run_rows"):
        Tuning(text_run_rows=0)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        Tuning().text_run_rows = 4


def test_close_ends_threads_and_refuses_later_calls(tiny_openclip_export, photo_files):
    import threading

    from fastclip import FastClipError

    before = {t.ident for t in threading.enumerate()}
    with ImageEmbedding(tiny_openclip_export, workers=2) as model:
        assert len(list(model.embed(photo_files, batch_size=2))) == len(photo_files)
    texts = [f"a photo of {i} dogs" for i in range(300)]
    with TextEmbedding(tiny_openclip_export, concurrent_runs=2) as text:
        list(text.embed(texts, batch_size=32))
        assert text._runner._second is not None
    left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("fastclip")]
    assert left == []
    with pytest.raises(FastClipError, match="closed"):
        list(model.embed(photo_files))
    with pytest.raises(FastClipError, match="closed"):
        text.embed_batch(["a dog"])

    # Dropped without close(): its threads end with it.
    dropped = ImageEmbedding(tiny_openclip_export, workers=2)
    list(dropped.embed(photo_files, batch_size=2))
    assert any(t.name.startswith("fastclip-decode") for t in threading.enumerate())
    del dropped
    import gc
    import time

    gc.collect()
    deadline = time.monotonic() + 10  # hang guard
    while any(t.name.startswith("fastclip-decode") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("fastclip-decode") for t in threading.enumerate())


class _SlowImage(io.BytesIO):
    """An in-memory image whose decode takes `delay` seconds; counts how many decodes started."""

    started = 0

    def __init__(self, data: bytes, delay: float):
        super().__init__(data)
        self.delay = delay
        self.first = True

    def read(self, *args):
        if self.first:
            self.first = False
            type(self).started += 1
            import time

            time.sleep(self.delay)
        return super().read(*args)


def test_closing_a_stream_early_cancels_queued_decodes_and_returns_promptly(tiny_openclip_export, photo_files):
    import time

    data = photo_files[0].read_bytes()
    model = ImageEmbedding(tiny_openclip_export, workers=2)
    _SlowImage.started = 0
    stream = model.embed((_SlowImage(data, 0.2) for _ in range(100)), batch_size=8)
    next(stream)  # batch 1 done, batches 2 and 3 (16 images, 1.6 s of decoding on 2 threads) queued
    t = time.perf_counter()
    stream.close()
    closed_in = time.perf_counter() - t
    time.sleep(0.5)  # let the decodes that had already started finish
    started = _SlowImage.started
    assert started <= 8 + 2 + 2  # batch 1, plus at most a few started on the 2 threads; the rest cancelled
    assert closed_in < 5.0  # hang guard only; it does not wait for started decodes
    time.sleep(0.5)
    assert _SlowImage.started == started  # nothing else runs later
    model.close()


def test_second_text_session_opens_once_under_concurrent_large_jobs(tiny_openclip_export, monkeypatch):
    import threading

    text = TextEmbedding(tiny_openclip_export, concurrent_runs=2)
    opened = []
    real = text._runner._open_second_session

    def counting():
        opened.append(1)
        import time

        time.sleep(0.2)  # widen the race window
        return real()

    monkeypatch.setattr(text._runner, "_open_second_session", counting)
    texts = [f"a photo of {i} cats on a mat" for i in range(300)]
    results = [None] * 4

    def job(k):
        results[k] = np.stack(list(text.embed(texts, batch_size=32)))

    threads = [threading.Thread(target=job, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    text.close()


def test_lazy_load_defers_the_session(tiny_openclip_export, photo_files):
    lazy = ImageEmbedding(tiny_openclip_export, lazy_load=True)
    assert lazy._session.loaded is None and lazy.embedding_size == lazy.dim == 32
    vector = next(lazy.embed(photo_files[:1]))
    assert lazy._session.loaded is not None
    np.testing.assert_array_equal(vector, next(ImageEmbedding(tiny_openclip_export).embed(photo_files[:1])))
    from fastclip.hashing import tower_fingerprint

    text = TextEmbedding(tiny_openclip_export, lazy_load=True)
    assert lazy.fingerprint == tower_fingerprint(lazy.folder, lazy.spec) != text.fingerprint
    assert text._session.loaded is None  # the fingerprint comes from the manifest, not a session


def test_plain_ascii_skips_ftfy_with_the_same_cleaning():
    """open_clip_clean's fast path (printable ASCII without '&') must equal open_clip's full cleaning."""
    import html
    import random

    import ftfy

    from fastclip.families.text import _PLAIN_ASCII, CLEANERS

    open_clip_clean = CLEANERS["open_clip"].clean

    def reference(text):
        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split())
        return text.strip().lower()

    rng = random.Random(0)
    pieces = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\r", "\r\n", "&amp;", "&", "\x0b", "\x0c",
                                                    "\x1b[31m", "é", "\x00", "<b>", "\u00a0"]
    fast = 0
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.5:
            text = text.replace("&", "").replace("é", "").replace("\u00a0", "")
        fast += bool(_PLAIN_ASCII.fullmatch(text))
        assert open_clip_clean(text) == reference(text), repr(text)
    assert 1000 < fast < 4000  # both paths were exercised
