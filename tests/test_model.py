"""Model resolution: fastembed-layout tower folders and hub repos from a pre-seeded offline cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fastclip import CLIP, ImageEmbedding, ModelError, TextEmbedding
from fastclip.model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO
from photos import SENTENCES, photo_array

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
    with pytest.raises(ModelError, match="not in the local cache") as info:
        ImageEmbedding("someone/not-cached", cache_dir=tmp_path, local_files_only=True)
    assert "\n" not in str(info.value)


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

    # Every constructor keyword and embed() argument of fastembed's classes is accepted here, in the same order.
    for ours, theirs in ((ImageEmbedding, fastembed.ImageEmbedding), (TextEmbedding, fastembed.TextEmbedding)):
        mine = inspect.signature(ours.__init__).parameters
        for name, p in inspect.signature(theirs.__init__).parameters.items():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self":
                assert name in mine or any(q.kind == q.VAR_KEYWORD for q in mine.values()), name
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
    from fastclip.session import cuda_device_count

    if cuda_device_count()[0] == 0:
        with pytest.raises(ModelError, match="cuda=True"):  # no GPU: asked-for CUDA is an error, not a silent CPU run
            TextEmbedding("Qdrant/clip-ViT-B-32-text", cache_dir=str(qdrant_cache), cuda=True)
