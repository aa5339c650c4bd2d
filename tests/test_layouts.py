"""Published ONNX layouts (fastclip.layouts): transformers.js and Immich repos, opened by their real repo ids from an
offline hub cache, in a process where torch cannot be imported, against each model's reference pipeline.

The repos are re-created with tiny random weights from each publisher's recipe (tests/support/published.py). The
references: transformers' image processor (PIL backend) + tokenizer + model for the transformers.js repos, open_clip's
transform + tokenizer + encode_* for the Immich ones, on real photos (640x427 rocket, a grayscale PNG, RGBA and
palette-with-transparency PNGs) and multilingual sentences (tests/fixtures/multilingual_sentences.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import hubcache
from support import published as pub
from support.photos import SENTENCES, cosines, photo_array, write_photos

from fastclip import CLIP, ImageEmbedding, ModelError, TextEmbedding
from fastclip.layouts import read_manifest

# The parity bar of issue 24: min cosine >= 0.99999 AND max |got - ref| <= 5e-6 x max |ref|. Measured noise
# (onnxruntime vs torch float32 on these tiny towers, printed by each test): 2.0e-7 to 7.2e-7 x max |ref|, the
# largest on Immich SigLIP 2 texts, so ~7x headroom under the bound; every min cosine rounds to 1.00000000.
MIN_COSINE = 0.99999
MAX_REL = 5e-6
REPOS = (pub.XENOVA_CLIP, pub.ONNX_SIGLIP2, pub.IMMICH_CLIP, pub.IMMICH_SIGLIP2)
TEXTS = hubcache.sentences() + SENTENCES


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from fastclip_export.torchvision_compat import import_torchvision

    import_torchvision()  # transformers imports torchvision; see torchvision_compat
    return pub.build(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The export's photos (JPEGs, PNGs, a grayscale one; rocket is 640x427) plus an RGBA PNG with graded alpha and
    a palette PNG with a transparent entry: the two kinds where open_clip's and transformers' RGB conversions part."""
    folder = tmp_path_factory.mktemp("photos")
    paths = write_photos(folder)
    rgb = Image.fromarray(photo_array("astronaut")).resize((300, 200))
    alpha = Image.linear_gradient("L").resize(rgb.size)
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(folder / "rgba.png")
    palette = Image.fromarray(photo_array("chelsea")).quantize(64)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    return paths + [folder / "rgba.png", folder / "palette.png"]


# Run by a fresh interpreter: torch, torchvision, transformers and open_clip are made unimportable first
# (sys.modules[name] = None: `import` raises ImportError and importlib.util.find_spec answers None, as for a
# package that is not installed), then each repo is opened by its id from the offline hub cache.
_RUNTIME = r"""
import json, sys
for name in ("torch", "torchvision", "transformers", "open_clip"):
    sys.modules[name] = None
import numpy as np
import fastclip
args = json.loads(sys.argv[1])
out = {}
for i, repo in enumerate(args["repos"]):
    with fastclip.CLIP(repo, exif_transpose=False) as clip:
        out[f"{i}_images"] = np.stack(list(clip.embed_images(args["photos"], batch_size=4, normalize=False)))
        out[f"{i}_texts"] = np.stack(list(clip.embed_texts(args["texts"], batch_size=8, normalize=False)))
        out[f"{i}_ids"] = clip.texts.tokenize(args["texts"])
        if clip.logit_scale is not None:
            out[f"{i}_probs"] = clip.classify(args["photos"][:3], ["cat", "rocket", "coffee"])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "open_clip") and sys.modules[m])
np.savez(args["out"], leaked=np.array(leaked, dtype=object), **out)
"""


@pytest.fixture(scope="module")
def runtime(published, photos, tmp_path_factory):
    """{repo: {"images", "texts", "ids", "probs"}} as a torch-free process computes them, by repo id, offline."""
    out = tmp_path_factory.mktemp("runtime") / "vectors.npz"
    env = {**os.environ, **hubcache.offline_env(published.home)}
    args = json.dumps({"repos": REPOS, "photos": [str(p) for p in photos], "texts": TEXTS, "out": str(out)})
    done = subprocess.run([sys.executable, "-c", _RUNTIME, args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = np.load(out, allow_pickle=True)
    assert list(data["leaked"]) == []
    return {repo: {k.split("_", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}_")}
            for i, repo in enumerate(REPOS)}


def _parity(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    cos = cosines(got, ref).min()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"{what}: min cosine {cos:.8f}, max |diff| / max |ref| {rel:.2e}")
    assert cos >= MIN_COSINE and rel <= MAX_REL, (what, cos, rel)


def _pils(photos: list[Path]) -> list[Image.Image]:
    images = []
    for p in photos:
        with Image.open(p) as im:
            im.load()
            images.append(im)
    return images


def _features(out) -> np.ndarray:
    # transformers 5 returns the model output with the projected features as pooler_output; 4.x a tensor.
    return (out if hasattr(out, "numpy") else out.pooler_output).detach().numpy()


# ------------------------------------------------------------------------------------------ transformers.js

def test_transformers_js_clip_matches_transformers(published, runtime, photos):
    """Xenova/clip-vit-base-patch32: CLIPImageProcessor (PIL backend: RGB on white first, floored crop offset) +
    get_image_features; CLIPTokenizerFast padded to the longest + get_text_features (the graph takes no mask: the
    causal tower's end token sees only real tokens either way). classify: softmax over exp(logit_scale) * cos,
    logit_scale read from onnx/model.onnx."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer

    folder, model = published.folders[pub.XENOVA_CLIP], published.models[pub.XENOVA_CLIP]
    got = runtime[pub.XENOVA_CLIP]
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, truncation=True, max_length=77,
                                                   return_tensors="pt")
    with torch.no_grad():
        pixels = processor(images=_pils(photos), return_tensors="pt")["pixel_values"]
        images = _features(model.get_image_features(pixel_values=pixels))
        texts = _features(model.get_text_features(**tokens))
    assert np.array_equal(got["ids"], tokens["input_ids"].numpy())
    _parity(got["images"], images, "Xenova CLIP images")
    _parity(got["texts"], texts, "Xenova CLIP texts")
    cos = cosines_matrix(images[:3], _features(model.get_text_features(
        **AutoTokenizer.from_pretrained(folder)(["a photo of a cat.", "a photo of a rocket.", "a photo of a coffee."],
                                                padding=True, return_tensors="pt"))))
    want = torch.softmax(torch.tensor(pub.logit_scale(model) * cos), dim=1).numpy()
    np.testing.assert_allclose(got["probs"], want, atol=2e-5)


def cosines_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_transformers_js_siglip2_matches_transformers_and_fastembed(published, runtime, photos):
    """onnx-community/siglip2-base-patch16-224-ONNX: SiglipImageProcessor (PIL backend: both sides resized,
    bilinear) + get_image_features; the Gemma tokenizer padded to the full 64 tokens + get_text_features on the ids
    alone, which is what the published graph computes (optimum's SigLIP config exports no attention mask, as
    open_clip and big_vision run SigLIP). classify: sigmoid(exp(logit_scale) * cos + logit_bias) from model.onnx.
    fastembed 0.9.1 on the same files gives the same vectors (RGB and grayscale photos: fastembed drops alpha where
    transformers composites it onto white)."""
    import fastembed
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer

    folder, model = published.folders[pub.ONNX_SIGLIP2], published.models[pub.ONNX_SIGLIP2]
    got = runtime[pub.ONNX_SIGLIP2]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=_pils(photos),
                                                                           return_tensors="pt")["pixel_values"]
        images = _features(model.get_image_features(pixel_values=pixels))
        texts = _features(model.get_text_features(input_ids=ids))
        labels = tokenizer(["a photo of a cat.", "a photo of a rocket.", "a photo of a coffee."], padding="max_length",
                           max_length=64, return_tensors="pt")["input_ids"]
        label_vectors = _features(model.get_text_features(input_ids=labels))
    assert np.array_equal(got["ids"], ids.numpy())
    _parity(got["images"], images, "onnx-community SigLIP 2 images")
    _parity(got["texts"], texts, "onnx-community SigLIP 2 texts")
    scale, bias = math.exp(float(model.logit_scale)), float(model.logit_bias)
    want = torch.sigmoid(torch.tensor(scale * cosines_matrix(images[:3], label_vectors) + bias)).numpy()
    np.testing.assert_allclose(got["probs"], want, atol=2e-5)

    rgb_photos = [str(p) for p in photos[:8]]
    name = "google/siglip2-base-patch16-224"
    theirs_images = np.stack(list(fastembed.ImageEmbedding(name, specific_model_path=str(folder)).embed(rgb_photos)))
    theirs_texts = np.stack(list(fastembed.TextEmbedding(name, specific_model_path=str(folder)).embed(TEXTS)))
    mine = got["images"][:8] / np.linalg.norm(got["images"][:8], axis=1, keepdims=True)
    _parity(theirs_images, mine, "fastembed vs fastclip, SigLIP 2 images")
    _parity(theirs_texts, got["texts"] / np.linalg.norm(got["texts"], axis=1, keepdims=True),
            "fastembed vs fastclip, SigLIP 2 texts")


# ------------------------------------------------------------------------------------------------- Immich

@pytest.mark.parametrize("repo", [pub.IMMICH_CLIP, pub.IMMICH_SIGLIP2])
def test_immich_matches_open_clip(published, runtime, photos, repo):
    """immich-app/ViT-B-32__openai (shortest side + center crop, CLIP BPE with open_clip's cleaning and zero
    padding) and immich-app/ViT-B-16-SigLIP2__webli (squash, the Gemma tokenizer with open_clip's canonicalize
    cleaning, padded to 64): open_clip's transform of visual/preprocess_cfg.json, its tokenizer and encode_*
    with normalize=True, which the graphs hold (their output is already unit length)."""
    import torch

    model, extra = published.models[repo], published.extra[repo]
    got = runtime[repo]
    ids = extra["tokenizer"](TEXTS)
    with torch.no_grad():
        images = model.encode_image(torch.stack([extra["preprocess"](im) for im in _pils(photos)]), normalize=True)
        texts = model.encode_text(ids, normalize=True)
    assert np.array_equal(got["ids"], ids.numpy())
    _parity(got["images"], images.numpy(), f"{repo} images")
    _parity(got["texts"], texts.numpy(), f"{repo} texts")
    np.testing.assert_allclose(np.linalg.norm(got["images"], axis=1), 1.0, atol=1e-6)  # normalize=False: the graph's
    if repo == pub.IMMICH_CLIP:  # OpenAI CLIP ViT-B/32: its trained scale is known (100), the files hold none
        assert "probs" in got
    else:
        assert "probs" not in got


def test_immich_mclip_text_matches_multilingual_clip(published, tmp_path):
    """An Immich M-CLIP repo (immich-app/XLM-Roberta-Large-Vit-B-32's layout): its textual graph takes int32
    input_ids and attention_mask; fastclip feeds textual/tokenizer.json's ids and mask as they are (no cleaning),
    padded to the graph's 77, against M-CLIP's forward on the tokenizer's own (longest) padding.

    The ids come from tokenizer.json through `tokenizers`, as Immich's server and transformers 4 run it:
    transformers 5 rebuilds an XLMRobertaTokenizer's pipeline from its class (WhitespaceSplit + Metaspace),
    which on this test tokenizer (NFKC + collapsed spaces) splits a tab or newline differently."""
    import torch
    from tokenizers import Tokenizer

    folder = tmp_path / "mclip"
    model = pub.immich_mclip(folder, published.folders[pub.IMMICH_CLIP])
    tokenizer = Tokenizer.from_file(str(folder / "textual" / "tokenizer.json"))
    texts = [t for t in TEXTS if len(tokenizer.encode(t).ids) <= 77]  # the graph holds 77 positions
    tokenizer.enable_padding(pad_id=1, pad_token="<pad>")
    encoded = tokenizer.encode_batch(texts)
    ids, mask = (torch.tensor([getattr(e, k) for e in encoded]) for k in ("ids", "attention_mask"))
    with torch.no_grad():
        want = model(ids, mask).numpy()
    with TextEmbedding(folder) as emb:
        assert emb.spec.attention_mask_input == "attention_mask" and emb.spec.ids_dtype == "int32"
        got = np.stack(list(emb.embed(texts, normalize=False)))
    _parity(got, want, "Immich M-CLIP texts")


def test_immich_static_batch_runs_at_any_batch_size(published, photos):
    """The graphs take exactly one image or text (no dynamic axes): every batch_size gives the vectors of one
    item at a time, bit for bit, and the decode threads still read ahead."""
    with ImageEmbedding(published.folders[pub.IMMICH_CLIP], exif_transpose=False, workers=2) as images:
        assert images.spec.batch == 1
        one = np.stack([next(images.embed([p])) for p in photos])
        for batch_size in (3, 32):
            assert np.array_equal(np.stack(list(images.embed(photos, batch_size=batch_size))), one)
        batch = images.embed_batch(photos, batch_size=None)
        assert np.array_equal(batch.vectors, one)
    with TextEmbedding(published.folders[pub.IMMICH_SIGLIP2], concurrent_runs=2) as texts:
        one = np.stack([next(texts.embed([t])) for t in TEXTS])
        # batch_size 2: 11 runs of 2, past the 8 that send a job to the concurrent one-thread session.
        for batch_size in (5, 2):
            assert np.array_equal(np.stack(list(texts.embed(TEXTS, batch_size=batch_size))), one), batch_size
        assert texts._runner._second is not None


def test_classify_refuses_a_model_whose_scale_is_not_shipped(published):
    """Immich's SigLIP 2 files hold no logit scale or bias: classify and probabilities say so, embeddings work."""
    with CLIP(published.folders[pub.IMMICH_SIGLIP2]) as clip:
        assert clip.logit_scale is None
        vector = next(clip.embed_texts(["a cat"]))
        with pytest.raises(ModelError, match="does not ship the model's trained logit scale and bias"):
            clip.classify([photo_array("chelsea")], ["cat", "dog"])
        with pytest.raises(ModelError, match="Immich layout"):
            clip.probabilities(vector[None], vector[None])
        assert clip.similarity(vector, vector)[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_info_and_server_on_a_model_without_its_scale(published):
    """`fastclip info` says the scale is not shipped; the server lists the model as unable to classify and
    answers /v1/classify with a 400 naming why, while /v1/embeddings works."""
    import base64

    import httpx
    from support.serving import jpeg, running

    folder = published.folders[pub.IMMICH_SIGLIP2]
    done = subprocess.run([sys.executable, "-m", "fastclip", "info", str(folder)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "logit_scale: not shipped" in done.stdout
    with running(folder) as (url, _):
        assert httpx.get(url + "/v1/models").json()["data"][0]["classify"] is False
        image = base64.b64encode(jpeg("chelsea")).decode()
        r = httpx.post(url + "/v1/classify", json={"input": [image], "labels": ["cat", "dog"]}, timeout=60)
        assert r.status_code == 400 and "does not ship its trained logit scale" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/embeddings", json={"input": ["a cat"]}, timeout=60)
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ preprocessing

def test_transformers_processors_pixel_exact(published, photos):
    """The image spec the transformers.js reader derives is the PIL-backend processor of its folder, pixel for
    pixel: CLIP's floored crop (rocket: 640x427 -> 335x224, 111 columns over) and SigLIP's plain resize, RGB
    first with transparency composited onto white."""
    from transformers import AutoImageProcessor

    from fastclip.images import ImagePreprocessor

    for repo in (pub.XENOVA_CLIP, pub.ONNX_SIGLIP2):
        folder = published.folders[repo]
        spec = read_manifest(folder).vision
        ours = ImagePreprocessor(spec, exif_transpose=False)
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        for i, (path, image) in enumerate(zip(photos, _pils(photos))):
            want = processor(images=image, return_tensors="np")["pixel_values"][0]
            gap = float(np.abs(ours(path, i) - want).max())
            assert gap <= 1e-6, (repo, path.name, gap)


def test_legacy_clip_feature_extractor_config_is_read_like_the_processor(published, photos, tmp_path):
    """openai/clip-vit-base-patch32's preprocessor_config.json (which Xenova's repo carries) predates image
    processors: CLIPFeatureExtractor, integer size and crop_size, no rescale keys. Same pixels as transformers'."""
    from transformers import AutoImageProcessor

    from fastclip.images import ImagePreprocessor

    folder = _copy(published.folders[pub.XENOVA_CLIP], tmp_path / "legacy")
    legacy = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}
    (folder / "preprocessor_config.json").write_text(json.dumps(legacy))
    ours = ImagePreprocessor(read_manifest(folder).vision, exif_transpose=False)
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    for i, (path, image) in enumerate(zip(photos, _pils(photos))):
        want = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert float(np.abs(ours(path, i) - want).max()) <= 1e-6, path.name


def test_open_clip_floor_and_round_differ_on_rocket(published, photos):
    """The crop offset is data: the same CLIP spec with open_clip's rounding lands one column away on rocket."""
    from dataclasses import replace

    from fastclip.images import ImagePreprocessor

    spec = read_manifest(published.folders[pub.XENOVA_CLIP]).vision
    rocket = next(p for p in photos if "rocket" in p.name)
    floor = ImagePreprocessor(spec, exif_transpose=False)(rocket, 0)
    round_ = ImagePreprocessor(replace(spec, crop_offset="round"), exif_transpose=False)(rocket, 0)
    np.testing.assert_array_equal(floor[:, :, 1:], round_[:, :, :-1])
    assert not np.array_equal(floor, round_)


@pytest.mark.parametrize("repo", [pub.IMMICH_CLIP, pub.IMMICH_SIGLIP2])
def test_immich_preprocessing_is_open_clips_transform(published, photos, repo):
    from fastclip.images import ImagePreprocessor

    spec = read_manifest(published.folders[repo]).vision
    ours = ImagePreprocessor(spec, exif_transpose=False)
    transform = published.extra[repo]["preprocess"]
    for i, (path, image) in enumerate(zip(photos, _pils(photos))):
        gap = float(np.abs(ours(path, i) - transform(image).numpy()).max())
        assert gap <= 1e-6, (repo, path.name, gap)


# --------------------------------------------------------------------------------------- files and errors

def test_manifest_format_3_fields_and_missing_scale(tiny_openclip_export, tmp_path):
    """Exports keep writing format 2 (readable by older fastclip); a v3 field makes a manifest v3, and a v2
    manifest carrying one is refused rather than half-read. A v3 manifest without logit_scale has none (a v2 one
    keeps CLIP's 100)."""
    from fastclip import manifest

    data = json.loads((tiny_openclip_export / "fastclip.json").read_text())
    assert data["format_version"] == 2
    body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    written = json.loads(manifest.dump(body, tmp_path).read_text())
    assert written["format_version"] == 2
    floor = {**body, "vision": {**body["vision"], "crop_offset": "floor"}}
    assert json.loads(manifest.dump(floor, tmp_path).read_text())["format_version"] == 3
    assert manifest.load(tmp_path).vision.crop_offset == "floor"
    with pytest.raises(ModelError, match="vision.crop_offset is a format-3 field in a version-2 manifest"):
        manifest.parse({**data, "vision": {**data["vision"], "crop_offset": "floor"}})
    with pytest.raises(ModelError, match="vision.convert_rgb 'sideways' is not one this fastclip knows"):
        manifest.parse({**data, "format_version": 3, "vision": {**data["vision"], "convert_rgb": "sideways"}})
    no_scale = {k: v for k, v in data.items() if k != "logit_scale"}
    assert manifest.parse(no_scale).logit_scale == 100.0
    assert manifest.parse({**no_scale, "format_version": 3}).logit_scale is None


def test_fastembed_folder_scale_only_for_a_known_openai_b32_repo(tiny_hf_export, tmp_path):
    """A fastembed tower folder holds no logit scale: a copy outside the hub cache has none (so CLIP.classify
    refuses it, as test_classify_refuses_a_model_whose_scale_is_not_shipped shows); the same files as a snapshot of
    Qdrant/clip-ViT-B-32-vision get OpenAI CLIP ViT-B/32's trained 100."""
    vision = shutil.copytree(tiny_hf_export / "vision", tmp_path / "vision")
    assert read_manifest(vision).logit_scale is None
    snapshot = hubcache.seed_repo(tmp_path / "hub", "Qdrant/clip-ViT-B-32-vision", {})
    shutil.copytree(vision, snapshot, dirs_exist_ok=True)
    assert read_manifest(snapshot).logit_scale == 100.0


def test_signatures_read_without_onnxruntime_match_it(published):
    """onnx_proto reads every graph's inputs and outputs as onnxruntime does, without loading the weights. (Output
    shapes: onnxruntime reports what its shape inference proves, e.g. 50 tokens where the file declares a symbol;
    every axis the file fixes agrees.)"""
    import onnxruntime as ort

    from fastclip.layouts.onnx_proto import read_signature

    for folder in published.folders.values():
        for path in sorted(folder.rglob("*.onnx")):
            if path.stat().st_size == 0:
                continue
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            signature = read_signature(path)
            assert [(p.name, f"tensor({p.type})", list(p.shape)) for p in signature.inputs] == \
                [(t.name, t.type, list(t.shape)) for t in session.get_inputs()], path
            theirs = session.get_outputs()
            assert [(p.name, f"tensor({p.type})", len(p.shape)) for p in signature.outputs] == \
                [(t.name, t.type, len(t.shape)) for t in theirs], path
            for port, t in zip(signature.outputs, theirs):
                assert all(a == b for a, b in zip(port.shape, t.shape) if isinstance(a, int)), (path, port, t.shape)


def test_transformers_js_precisions_and_other_variants(published):
    """precision= picks the `_fp16` and `_quantized` files (transformers.js's default 8-bit one); the 4-bit and
    unsigned variants are listed, not run."""
    folder = published.folders[pub.XENOVA_CLIP]
    manifest = read_manifest(folder)
    assert {p: f.path for p, f in manifest.vision.files.items()} == {
        "fp32": "onnx/vision_model.onnx", "fp16": "onnx/vision_model_fp16.onnx", "int8": "onnx/vision_model_quantized.onnx"}
    assert manifest.source["variants_not_run"] == ["vision_model_bnb4.onnx"]
    texts = TEXTS[:8]
    with TextEmbedding(folder) as fp32:
        want = np.stack(list(fp32.embed(texts)))
    photos = [photo_array(name) for name in ("chelsea", "rocket", "coffee")]
    with ImageEmbedding(folder) as fp32:
        want_images = np.stack(list(fp32.embed(photos)))
    # Random tiny towers: fp16 keeps cosine > 0.9999, 8-bit weights > 0.99 here; the floors only catch a wrong file.
    for precision, floor in (("fp16", 0.999), ("int8", 0.95)):
        with TextEmbedding(folder, precision=precision) as emb, ImageEmbedding(folder, precision=precision) as img:
            assert emb.precision == precision == img.precision
            got = np.stack(list(emb.embed(texts)))
            got_images = np.stack(list(img.embed(photos)))
        assert cosines(got, want).min() >= floor, precision
        assert cosines(got_images, want_images).min() >= floor, precision


def _copy(folder: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*drop))
    return dest


def test_one_tower_repo_opens_it_and_names_the_missing_one(published, tmp_path):
    vision_only = _copy(published.folders[pub.XENOVA_CLIP], tmp_path / "vision-only", ("text_model*",))
    assert next(ImageEmbedding(vision_only).embed([photo_array("coffee")])).shape == (32,)
    with pytest.raises(ModelError, match=r"no text tower \(no onnx/text_model.onnx \(found model.onnx"):
        TextEmbedding(vision_only)
    text_only = _copy(published.folders[pub.IMMICH_CLIP], tmp_path / "text-only", ("visual",))
    assert next(TextEmbedding(text_only).embed(["a cat"])).shape == (16,)
    with pytest.raises(ModelError, match=r"no vision tower \(no visual/model.onnx\)"):
        ImageEmbedding(text_only)


def test_joint_only_transformers_js_repo_is_refused(published, tmp_path):
    joint = _copy(published.folders[pub.XENOVA_CLIP], tmp_path / "joint", ("*_model*",))
    with pytest.raises(ModelError, match="only the joint onnx/model.onnx"):
        ImageEmbedding(joint)


def test_unexpected_graphs_and_files_are_model_errors_naming_what_was_found(published, tmp_path):
    clip = published.folders[pub.XENOVA_CLIP]
    # A SigLIP-named config over CLIP's graphs: the expected output is not there; the error lists the graph's.
    wrong = _copy(clip, tmp_path / "wrong-family")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    with pytest.raises(ModelError, match=r"expected a \(batch, dim\) output 'pooler_output'.*outputs: image_embeds "
                                         r"float\[batch_size, 32\], last_hidden_state"):
        ImageEmbedding(wrong)
    (wrong / "config.json").write_text(json.dumps({**config, "model_type": "chinese_clip"}))
    with pytest.raises(ModelError, match="model_type 'chinese_clip' is not a transformers.js layout"):
        ImageEmbedding(wrong)
    no_tokenizer = _copy(clip, tmp_path / "no-tokenizer", ("tokenizer*",))
    with pytest.raises(ModelError, match="no tokenizer.json"):
        TextEmbedding(no_tokenizer)
    immich = _copy(published.folders[pub.IMMICH_CLIP], tmp_path / "immich", ("preprocess_cfg.json",))
    with pytest.raises(ModelError, match="no visual/preprocess_cfg.json"):
        ImageEmbedding(immich)
    (immich / "visual" / "preprocess_cfg.json").write_text(json.dumps({"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                                      "interpolation": "lanczos"}))
    with pytest.raises(ModelError, match="interpolation=lanczos"):
        ImageEmbedding(immich)
    broken = _copy(published.folders[pub.IMMICH_CLIP], tmp_path / "broken")
    (broken / "textual" / "model.onnx").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        TextEmbedding(broken)
    empty = tmp_path / "empty"
    (empty / "weights").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"no manifest .* and no published layout fastclip reads.*it holds weights/"):
        ImageEmbedding(empty)
