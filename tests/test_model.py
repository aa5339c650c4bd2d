"""Model resolution: fastembed-layout tower folders and hub repos from a pre-seeded offline cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.photos import SENTENCES, photo_array

from fastclip import CLIP, ImageEmbedding, ModelError, TextEmbedding
from fastclip.model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def seed_hub_cache(cache: Path, repo_id: str, tower_folder: Path) -> Path:
    """Lay a tower folder out the way huggingface_hub caches a repo snapshot (refs/main → snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for f in tower_folder.iterdir():
        if f.is_file():
            shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


@pytest.fixture(scope="module")
def qdrant_cache(tmp_path_factory, tiny_hf_export):
    """fastembed's published repo names, holding towers of our tiny HF export (their layout, no manifest)."""
    cache = tmp_path_factory.mktemp("hub-cache")
    seed_hub_cache(cache, DEFAULT_VISION_REPO, tiny_hf_export / "vision")
    seed_hub_cache(cache, DEFAULT_TEXT_REPO, tiny_hf_export / "text")
    return cache


def test_fastembed_layout_tower_folders_load_and_match(tiny_hf_export, tmp_path):
    vision = shutil.copytree(tiny_hf_export / "vision", tmp_path / "vision")
    text = shutil.copytree(tiny_hf_export / "text", tmp_path / "text")
    assert not (vision / "fastclip.json").exists()
    image = photo_array("coffee")
    got = next(ImageEmbedding(vision).embed([image]))
    want = next(ImageEmbedding(tiny_hf_export).embed([image]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    got_t = np.stack(list(TextEmbedding(text).embed(SENTENCES)))
    want_t = np.stack(list(TextEmbedding(tiny_hf_export).embed(SENTENCES)))
    np.testing.assert_allclose(got_t, want_t, atol=1e-6)


def test_default_models_come_from_the_hub_cache_offline(qdrant_cache, tiny_hf_export, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = CLIP(cache_dir=qdrant_cache, local_files_only=True)
    assert clip.images.model_name == DEFAULT_VISION_REPO and clip.texts.model_name == DEFAULT_TEXT_REPO
    assert SNAPSHOT in str(clip.images.folder)
    vectors = np.stack(list(clip.embed_texts(SENTENCES[:4])))
    want = np.stack(list(TextEmbedding(tiny_hf_export).embed(SENTENCES[:4])))
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    assert clip.logit_scale == 100.0  # no manifest: OpenAI CLIP's learned (clamped) scale


def test_repo_missing_from_cache_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not in the hub cache") as info:
        ImageEmbedding("someone/not-cached", cache_dir=tmp_path, local_files_only=True)
    message = str(info.value)
    assert "\n" not in message
    # The real folder (not "default") and both ways out.
    assert str(tmp_path.resolve()) in message and "--model PATH" in message and "fastclip export" in message


def _no_hub_env(tmp_path, **extra):
    """A child environment whose hub endpoint is a closed local port: the connection is refused at once."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
    return {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home"), **extra}


def test_default_model_unreachable_hub_names_cache_and_way_out(tmp_path):
    """No model given, nothing cached, hub unreachable: one line in well under a second of hub time,
    naming the cache folder actually searched and the ways out; huggingface_hub's retry loop never starts."""
    code = ("import time\nfrom fastclip import ImageEmbedding, ModelError\nt = time.perf_counter()\n"
            "try:\n    ImageEmbedding()\nexcept ModelError as e:\n"
            "    print('ERR:' + str(e))\nprint('SECONDS:%.2f' % (time.perf_counter() - t))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_no_hub_env(tmp_path), timeout=120)
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERR:")]
    assert len(errors) == 1, result.stdout + result.stderr
    message = errors[0]
    assert DEFAULT_VISION_REPO in message and "cannot connect to 127.0.0.1:9" in message
    assert str(tmp_path / "hf-home" / "hub") in message and "--model PATH" in message and "fastclip export" in message
    assert "Retrying" not in result.stderr
    seconds = float(result.stdout.split("SECONDS:")[1])
    assert seconds < 5, seconds  # one refused connect; the retry loop it replaces took 31 s


def test_nonexistent_local_folder(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        ImageEmbedding(str(tmp_path / "nope" / "deeper"))


def test_text_folder_has_no_vision_tower(tiny_hf_export):
    with pytest.raises(ModelError):
        ImageEmbedding(tiny_hf_export / "text")


def test_fastembed_snippets_run_unchanged_after_swapping_the_import(qdrant_cache, monkeypatch):
    """fastembed's README/docs usage, with only the import changed (signatures of fastembed 0.9.1)."""
    import inspect

    import fastembed

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from fastclip import ImageEmbedding, TextEmbedding  # was: from fastembed import ImageEmbedding, TextEmbedding

    images = [photo_array("astronaut"), photo_array("coffee")]
    model = ImageEmbedding(model_name="Qdrant/clip-ViT-B-32-vision", cache_dir=str(qdrant_cache))
    embeddings = list(model.embed(images))
    assert len(embeddings) == 2 and embeddings[0].shape == (model.embedding_size,)

    documents = ["This is built to be faster and lighter than other embedding libraries.",
                 "fastembed is supported by and maintained by Qdrant."]
    embedding_model = TextEmbedding(model_name="Qdrant/clip-ViT-B-32-text", cache_dir=str(qdrant_cache),
                                    threads=1, providers=["CPUExecutionProvider"], lazy_load=True)
    embeddings_generator = embedding_model.embed(documents, batch_size=16, parallel=None)
    embeddings_list = list(embeddings_generator)
    assert len(embeddings_list[0]) == embedding_model.embedding_size == 32
    np.testing.assert_array_equal(next(embedding_model.query_embed("a dog")), next(embedding_model.embed(["a dog"])))
    assert len(list(embedding_model.passage_embed(documents))) == 2
    cpu = TextEmbedding("Qdrant/clip-ViT-B-32-text", cache_dir=str(qdrant_cache), cuda=False, device_ids=None)
    assert cpu.device == "cpu"

    # Every constructor keyword of fastembed's classes is a named keyword here (the class's own or the
    # shared base's: **options only forwards to the base), and an unknown one is a TypeError naming it.
    from fastclip.tower import TowerModel

    base = {n for n, p in inspect.signature(TowerModel.__init__).parameters.items() if p.kind == p.KEYWORD_ONLY}
    for ours, theirs in ((ImageEmbedding, fastembed.ImageEmbedding), (TextEmbedding, fastembed.TextEmbedding)):
        mine = {n for n, p in inspect.signature(ours.__init__).parameters.items() if p.kind == p.KEYWORD_ONLY} | base
        mine.add("model_name")
        for name, p in inspect.signature(theirs.__init__).parameters.items():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self":
                assert name in mine, name
        with pytest.raises(TypeError, match="cache_dirr"):
            ours("Qdrant/clip-ViT-B-32-text", cache_dirr=str(qdrant_cache))
        theirs_embed = list(inspect.signature(theirs.embed).parameters)[1:4]
        mine_embed = list(inspect.signature(ours.embed).parameters)[1:4]
        assert theirs_embed[1:] == mine_embed[1:] == ["batch_size", "parallel"]
        assert inspect.signature(ours.embed).parameters["batch_size"].default == \
            inspect.signature(theirs.embed).parameters["batch_size"].default or ours is ImageEmbedding
        listed = ours.list_supported_models()
        assert {"model", "dim", "description", "license", "size_in_GB", "sources", "model_file"} <= set(listed[0])
        theirs_listed = {m["model"]: m["dim"] for m in theirs.list_supported_models()}
        assert all(theirs_listed.get(m["model"]) == m["dim"] for m in listed)  # the same repos, the same dims
        assert ours.get_embedding_size(listed[0]["model"]) == listed[0]["dim"]
    with pytest.raises(ValueError, match="either providers= or cuda="):
        TextEmbedding("Qdrant/clip-ViT-B-32-text", cache_dir=str(qdrant_cache), cuda=True, providers=["CPUExecutionProvider"])
    from fastclip.providers import cuda_device_count

    if cuda_device_count()[0] == 0:
        with pytest.raises(ModelError, match="cuda=True"):  # no GPU: asked-for CUDA is an error, not a silent CPU run
            TextEmbedding("Qdrant/clip-ViT-B-32-text", cache_dir=str(qdrant_cache), cuda=True)


# --------------------------------------------------------------------------- manifest abuse: ModelError at load


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of a model folder whose fastclip.json went through edit(manifest dict) -> new JSON value."""
    import json

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "fastclip.json").read_text())
    (dst / "fastclip.json").write_text(json.dumps(edit(manifest)))
    return dst


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        node[last] = value
        return m

    return edit


@pytest.mark.parametrize(
    "cls, edit, message",
    [
        (ImageEmbedding, _set("vision.files.fp32.path", "../outside/model.onnx"), "outside the model folder"),
        (ImageEmbedding, _set("vision.files.fp32.path", "/etc/passwd"), "outside the model folder"),
        (ImageEmbedding, _set("vision.files.fp32.path", "C:\\models\\x.onnx"), "outside the model folder"),
        (ImageEmbedding, _set("vision.files.fp32.path", "vision\\..\\..\\x.onnx"), "outside the model folder"),
        (ImageEmbedding, _set("vision.files.fp32.external_data", ["../secret.bin"]), "outside the model folder"),
        (TextEmbedding, _set("text.tokenizer", "../../tokenizer.json"), "outside the model folder"),
        (ImageEmbedding, lambda m: [m], "JSON object, got a JSON list"),
        (ImageEmbedding, _set("vision", [1, 2]), "must be an object"),
        (ImageEmbedding, _set("vision.files", ["model.onnx"]), "must be an object"),
        (ImageEmbedding, _set("vision.std", [0, 0, 0]), r"std values must be > 0"),
        (ImageEmbedding, _set("vision.std", [0.2, float("nan"), 0.2]), "finite"),
        (ImageEmbedding, _set("vision.mean", [0.5]), "exactly 3 values"),
        (ImageEmbedding, _set("vision.mean", "0.5"), "exactly 3 values"),
        (ImageEmbedding, _set("vision.image_size", 0), "image_size must be between 1 and 4096"),
        (ImageEmbedding, _set("vision.image_size", 10**9), "image_size must be between 1 and 4096"),
        (ImageEmbedding, _set("vision.image_size", "224px"), "image_size must be an integer"),
        (ImageEmbedding, _set("embed_dim", -3), "embed_dim must be between 1 and"),
        (ImageEmbedding, _set("logit_scale", float("inf")), "logit_scale must be a finite number"),
        (TextEmbedding, _set("text.context_length", 200), r"context_length=200 tokens.*do not fit this graph"),
        (TextEmbedding, _set("text.context_length", 10**7), "context_length must be between 3 and 4096"),
        (TextEmbedding, _set("text.eos_token_id", 60000), "outside the tokenizer's vocabulary|60000.*do not fit this graph"),
        (TextEmbedding, _set("text.pad_token_id", -1), "pad_token_id must be between 0 and"),
        # Found by fuzzing (manifest-mutate, seed 1, case 3075): reached numpy as an OverflowError.
        (TextEmbedding, _set("text.bos_token_id", 2**63), "bos_token_id must be between 0 and 2147483647"),
        (TextEmbedding, _set("text.pad_token_id", 49410), "49410.*do not fit this graph"),
    ],
)
def test_manifest_abuse_is_a_model_error_at_load(tiny_openclip_export, tmp_path, cls, edit, message):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tiny_openclip_export / "vision" / "model.onnx", outside / "model.onnx")  # a readable target
    shutil.copy(tiny_openclip_export / "text" / "tokenizer.json", tmp_path / "tokenizer.json")
    folder = _edited(tiny_openclip_export, tmp_path / "a" / "model", edit)
    with pytest.raises(ModelError, match=message):
        cls(folder)


def test_fastembed_folder_with_a_list_config_is_a_model_error(tiny_hf_export, tmp_path):
    vision = shutil.copytree(tiny_hf_export / "vision", tmp_path / "vision")
    (vision / "preprocessor_config.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelError, match="expected a JSON object"):
        ImageEmbedding(vision)


def test_hub_snapshot_made_of_symlinks_into_blobs_loads(tiny_openclip_export, tmp_path):
    # huggingface_hub lays snapshot files out as symlinks to ../../blobs/<hash>: the lexical path check
    # must accept them (resolving links would put every file outside the snapshot folder).
    import hashlib

    repo = tmp_path / "models--someone--tiny"
    snapshot = repo / "snapshots" / SNAPSHOT
    (repo / "blobs").mkdir(parents=True)
    for f in tiny_openclip_export.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / f.relative_to(tiny_openclip_export)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    assert (snapshot / "vision" / "model.onnx").is_symlink()
    image = photo_array("coffee")
    got = next(ImageEmbedding(snapshot, verify=True).embed([image]))
    want = next(ImageEmbedding(tiny_openclip_export).embed([image]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    texts = ["a dog", SENTENCES[3]]
    np.testing.assert_allclose(np.stack(list(TextEmbedding(snapshot, verify=True).embed(texts))),
                               np.stack(list(TextEmbedding(tiny_openclip_export).embed(texts))), rtol=0, atol=1e-6)


def test_specific_model_path_loads_that_folder_without_the_hub(tiny_hf_export, tmp_path, monkeypatch):
    """fastembed's keyword: the repo name stays the model's name, the files come from the folder given
    (an empty cache and no network: resolving the name would fail)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = photo_array("rocket")
    model = ImageEmbedding(DEFAULT_VISION_REPO, specific_model_path=str(tiny_hf_export / "vision"),
                           cache_dir=str(tmp_path / "empty-cache"), local_files_only=True)
    assert model.model_name == DEFAULT_VISION_REPO and model.folder == tiny_hf_export / "vision"
    np.testing.assert_array_equal(next(model.embed([image])), next(ImageEmbedding(tiny_hf_export / "vision").embed([image])))
    text = TextEmbedding(DEFAULT_TEXT_REPO, specific_model_path=tiny_hf_export / "text", cache_dir=str(tmp_path / "empty-cache"))
    np.testing.assert_allclose(np.stack(list(text.embed(SENTENCES[:3]))),
                               np.stack(list(TextEmbedding(tiny_hf_export).embed(SENTENCES[:3]))), rtol=0, atol=1e-6)
    with pytest.raises(ModelError, match="not in the hub cache"):  # the same name without it: no files
        ImageEmbedding(DEFAULT_VISION_REPO, cache_dir=str(tmp_path / "empty-cache"), local_files_only=True)


def test_revision_picks_the_snapshot(tiny_hf_export, tiny_openclip_export, tmp_path, monkeypatch):
    """revision= reaches huggingface_hub: a branch name or a commit hash selects that snapshot's files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    repo_id = "someone/towers"
    seed_hub_cache(cache, repo_id, tiny_hf_export / "vision")  # main
    other = "fedcba9876543210fedcba9876543210fedcba98"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / other).mkdir()
    for f in (tiny_openclip_export / "vision").iterdir():
        shutil.copy(f, repo / "snapshots" / other / f.name)
    (repo / "refs" / "v2").write_text(other)
    image = photo_array("chelsea")
    want = {SNAPSHOT: next(ImageEmbedding(tiny_hf_export / "vision").embed([image])),
            other: next(ImageEmbedding(tiny_openclip_export / "vision").embed([image]))}
    assert abs(float(want[SNAPSHOT] @ want[other])) < 0.99  # two different towers
    for revision, snapshot in ((None, SNAPSHOT), ("main", SNAPSHOT), ("v2", other), (other, other)):
        model = ImageEmbedding(repo_id, cache_dir=cache, local_files_only=True, revision=revision)
        assert model.folder.name == snapshot, revision
        np.testing.assert_array_equal(next(model.embed([image])), want[snapshot])
    with pytest.raises(ModelError, match="not in the hub cache"):
        ImageEmbedding(repo_id, cache_dir=cache, local_files_only=True, revision="v3")
