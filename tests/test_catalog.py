"""The catalog of named models (fastclip/layouts/catalog.json): its entries, names resolved through an offline
hub cache on every surface that takes a model, close matches for typos, `fastclip models`, and the JSON and
the docs table staying what the generator (python -m fastclip_export.catalog) derives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from support.hubcache import seed_repo
from support.photos import SENTENCES, photo_array
from test_cli import fastclip as run_cli

from fastclip import CLIP, ImageEmbedding, ModelError, TextEmbedding, list_supported_models
from fastclip.defaults import PRECISIONS
from fastclip.layouts import catalog
from fastclip.manifest import INTERPOLATIONS, MAX_CONTEXT_LENGTH, MAX_IMAGE_SIZE, RESIZE_MODES, SCORINGS
from fastclip.model import DEFAULT_TEXT_REPO, DEFAULT_VISION_REPO, resolve_folder

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The same graph files on the same inputs: measured max |diff| 0.0 here (CLIP("clip-vit-b-32") against the
# folder it came from, texts and a photo). 1e-6 only allows for another batching's float reordering, the
# bound the other model tests use; a wrong tower or preprocessing moves vectors far more.
ATOL = 1e-6


def _raw() -> dict:
    return json.loads(catalog.CATALOG_FILE.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ data


def test_at_least_60_named_models_from_three_publishers():
    models = catalog.models()
    assert len(models) >= 60
    by_layout = {layout: [m for m in models if m["layout"] == layout] for layout in _raw()["layouts"]}
    # Immich's exporter list: 53 open_clip models + 4 M-CLIP ones; every transformers.js repo checked on the hub
    assert len(by_layout["immich"]) == 57 and len(by_layout["transformers.js"]) == 16
    assert [m["name"] for m in by_layout["fastembed"]] == ["qdrant-clip-vit-b-32"]
    families = {m["family"] for m in models}
    assert families == set(_raw()["families"])  # every family declared is used, and no other


def test_every_entry_is_valid():
    raw = _raw()
    recreated = []
    for m in raw["models"]:
        where = m["name"]
        assert m["layout"] in raw["layouts"], where
        assert set(m["towers"]) == set(catalog.TOWERS) and all(REPO_ID.match(r) for r in m["towers"].values()), where
        assert m["family"] in raw["families"], where
        assert all(isinstance(m[k], int) and m[k] > 0 for k in ("embed_dim", "image_size", "context_length")), where
        assert m["image_size"] <= MAX_IMAGE_SIZE and m["context_length"] <= MAX_CONTEXT_LENGTH, where
        pre = m["preprocessing"]
        assert pre["resize"] in RESIZE_MODES and pre["interpolation"] in INTERPOLATIONS and pre["source"], where
        assert len(pre["mean"]) == len(pre["std"]) == 3 and all(0 < s < 1 for s in pre["std"]), where
        assert m["scoring"]["kind"] in SCORINGS and m["scoring"]["scale_ships"] in (True, False, None), where
        # SigLIP-style models are trained with the sigmoid loss, CLIP-style ones with softmax: an independent check
        assert (m["scoring"]["kind"] == "sigmoid") == (m["family"] in ("siglip", "siglip2", "nllb-siglip")), where
        assert m["license"] is None or (isinstance(m["license"], str) and m["license"]), where
        assert set(m["size_mb"]) == set(catalog.TOWERS), where
        for sizes in m["size_mb"].values():
            assert sizes and set(sizes) <= set(PRECISIONS), where
            assert all(v is None or (isinstance(v, (int, float)) and v > 0) for v in sizes.values()), where
            known = [sizes[p] for p in PRECISIONS if sizes.get(p) is not None]
            assert known == sorted(known, reverse=True), where  # fp32 > fp16 > int8 where all are published
        assert isinstance(m["multilingual"], bool) and isinstance(m["verified"], str) and m["verified"], where
        if m["fastembed"]:
            assert set(m["fastembed"]) == set(catalog.TOWERS), where
        if "tests/test_layouts.py" in m["verified"]:
            recreated.append(m["name"])
        for test in re.findall(r"tests/(test_\w+\.py)::(\w+)", m["verified"]):
            assert f"def {test[1]}(" in (ROOT / "tests" / test[0]).read_text(encoding="utf-8"), (where, test)
    assert sorted(recreated) == sorted(["onnx-community/siglip2-base-patch16-224-ONNX", "Xenova/clip-vit-base-patch32",
                                        "immich-app/ViT-B-32__openai", "immich-app/ViT-B-16-SigLIP2__webli"])
    for layout in raw["layouts"].values():
        assert set(layout["files"]) == set(catalog.TOWERS) and isinstance(layout["skip"], list)


def test_every_name_belongs_to_one_entry():
    owners: dict[str, str] = {}
    for m in catalog.models():
        for key in {k.lower() for k in (m["name"], *m["aliases"], *m["towers"].values())}:
            assert owners.setdefault(key, m["name"]) == m["name"], f"{key}: {owners[key]} and {m['name']}"
    for m in catalog.models():
        for key in (m["name"], *m["aliases"], *m["towers"].values()):
            assert catalog.find(key) is m and catalog.find(key.upper()) is m


def test_short_and_fastembed_names():
    pair = catalog.find("clip-vit-b-32")
    assert pair["towers"] == {"vision": DEFAULT_VISION_REPO, "text": DEFAULT_TEXT_REPO} and catalog.split_towers(pair)
    assert catalog.find(DEFAULT_TEXT_REPO) is pair
    siglip2 = catalog.find("google/siglip2-base-patch16-224")  # fastembed's name for these files
    assert siglip2 is catalog.find("siglip2-base") and siglip2["towers"]["vision"] == "onnx-community/siglip2-base-patch16-224-ONNX"
    assert (siglip2["embed_dim"], siglip2["image_size"], siglip2["context_length"]) == (768, 224, 64)
    assert catalog.find("ViT-B-32__openai")["name"] == "immich-app/ViT-B-32__openai"  # Immich's own name
    assert catalog.find("clip-vit-b-3") is None and catalog.find("openai/clip-vit-base-patch32") is None
    assert ImageEmbedding.get_embedding_size("immich-app/ViT-gopt-16-SigLIP2-384__webli") == 1536
    assert TextEmbedding.get_embedding_size("immich-app/XLM-Roberta-Large-Vit-B-16Plus") == 640


def test_list_supported_models_hands_out_copies():
    listed = list_supported_models()
    assert [m["name"] for m in listed] == [m["name"] for m in catalog.models()]
    assert all(m["model"] == m["name"] and m["dim"] == m["embed_dim"] for m in listed)
    listed[0]["towers"]["vision"] = "someone/else"
    assert catalog.models()[0]["towers"]["vision"] == DEFAULT_VISION_REPO


# --------------------------------------------------------------------------------------- by name, offline


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_hf_export) -> Path:
    """A hub cache holding fastembed's two CLIP repos (towers of the tiny export, fastembed's layout), an
    Immich repo name (its files stand in: only the name -> snapshot step is under test here) and a repo id
    that is in no catalog."""
    cache = tmp_path_factory.mktemp("hub")
    for repo, tower in ((DEFAULT_VISION_REPO, "vision"), (DEFAULT_TEXT_REPO, "text")):
        seed_repo(cache, repo, {f.name: f for f in (tiny_hf_export / tower).iterdir() if f.is_file()})
    seed_repo(cache, "immich-app/ViT-B-32__openai", {"config.json": "{}"})
    seed_repo(cache, "someone/tiny-clip", {str(f.relative_to(tiny_hf_export)): f for f in tiny_hf_export.rglob("*")
                                           if f.is_file()})
    return cache


def test_a_catalog_name_resolves_to_its_repo_per_tower(hub):
    offline = dict(cache_dir=hub, local_files_only=True)
    vision = resolve_folder("clip-vit-b-32", tower="vision", **offline)
    text = resolve_folder("CLIP-VIT-B-32", tower="text", **offline)
    assert "models--Qdrant--clip-ViT-B-32-vision" in str(vision) and "models--Qdrant--clip-ViT-B-32-text" in str(text)
    # either of fastembed's repo names stands for both towers
    assert resolve_folder(DEFAULT_VISION_REPO, tower="text", **offline) == text
    assert resolve_folder(DEFAULT_TEXT_REPO, **offline) == text
    assert "models--immich-app--ViT-B-32__openai" in str(resolve_folder("ViT-B-32__openai", **offline))


def test_classes_take_catalog_names(hub, tiny_hf_export):
    offline = dict(cache_dir=hub, local_files_only=True)
    image = photo_array("coffee")
    want_image = next(ImageEmbedding(tiny_hf_export).embed([image]))
    want_text = np.stack(list(TextEmbedding(tiny_hf_export).embed(SENTENCES[:4])))
    model = ImageEmbedding("clip-vit-b-32", **offline)
    assert model.model_name == "clip-vit-b-32" and "Qdrant--clip-ViT-B-32-vision" in str(model.folder)
    np.testing.assert_allclose(next(model.embed([image])), want_image, atol=ATOL)
    for name in ("clip-vit-b-32", DEFAULT_VISION_REPO, DEFAULT_TEXT_REPO):
        with CLIP(name, **offline) as clip:
            np.testing.assert_allclose(np.stack(list(clip.embed_texts(SENTENCES[:4]))), want_text, atol=ATOL)
            np.testing.assert_allclose(next(clip.embed_images([image])), want_image, atol=ATOL)
    # a repo id in no catalog still resolves as a plain hub repo
    np.testing.assert_allclose(next(ImageEmbedding("someone/tiny-clip", **offline).embed([image])), want_image, atol=ATOL)


def test_a_local_folder_wins_over_a_catalog_name(tiny_hf_export, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_hf_export, tmp_path / "clip-vit-b-32")
    monkeypatch.chdir(tmp_path)
    assert ImageEmbedding("clip-vit-b-32", local_files_only=True).folder == Path("clip-vit-b-32")


def test_unknown_names_get_close_matches(hub):
    offline = dict(cache_dir=hub, local_files_only=True)
    with pytest.raises(ModelError, match=r"clip-vit-b32: no such model folder.*close catalog names: clip-vit-b-32"):
        ImageEmbedding("clip-vit-b32", **offline)
    with pytest.raises(ModelError, match="close catalog names: siglip2-base") as info:
        TextEmbedding("siglip2-bsae", **offline)
    assert "`fastclip models` lists them all" in str(info.value) and "\n" not in str(info.value)
    # owner/name with a typo: not in the cache, and the catalog's spelling is offered
    with pytest.raises(ModelError, match=r"not in the hub cache.*close catalog names: immich-app/ViT-B-32__openai"):
        CLIP("immich-app/ViT-B-32__openia", **offline)
    with pytest.raises(ModelError, match="not in the hub cache") as info:
        ImageEmbedding("someone/not-cached", **offline)
    assert "close catalog names" not in str(info.value)  # nothing close: nothing offered


def test_cli_embed_search_and_info_take_a_catalog_name(hub, tiny_hf_export, tmp_path):
    hub_args = ("--cache-dir", hub, "--offline")
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for name in ("coffee", "astronaut", "chelsea"):
        Image.fromarray(photo_array(name)).save(photos / f"{name}.png")
    out = tmp_path / "images.npy"
    result = run_cli("embed", photos, "--model", "clip-vit-b-32", "--out", out, *hub_args)
    assert result.returncode == 0, result.stderr
    from fastclip.sinks import read_embeddings

    got = read_embeddings(out)
    assert got.meta["model"] == "clip-vit-b-32"
    want = np.stack(list(ImageEmbedding(tiny_hf_export).embed(got.items)))
    np.testing.assert_allclose(got.vectors, want, atol=ATOL)
    # the file records the catalog name; search resolves its text tower from the other repo
    result = run_cli("search", out, "--text", "a cup of coffee", "-k", "3", *hub_args)
    assert result.returncode == 0, result.stderr
    query = next(TextEmbedding(tiny_hf_export).embed(["a cup of coffee"]))
    best = int(np.argmax(want @ query))
    assert result.stdout.splitlines()[1].split(maxsplit=2)[2] == got.items[best]
    result = run_cli("info", "clip-vit-b-32", *hub_args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model folder: ") == 2 and "vision tower:" in result.stdout and "text tower:" in result.stdout


def test_serve_loads_a_catalog_name_with_both_towers(hub):
    pytest.importorskip("prometheus_client")
    from fastclip.serve import Limits, ModelSource
    from fastclip.serve.metrics import Metrics
    from fastclip.serve.models import load_model

    served = load_model(ModelSource("clip", "clip-vit-b-32"), Limits(), Metrics(), cache_dir=str(hub), offline=True)
    try:
        assert served.modalities == ["image", "text"] and served.clip is not None and served.dim == 32
    finally:
        served.close()


# ------------------------------------------------------------------------------------------- the command


def test_models_command_lists_and_filters():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{len(catalog.models())} models by name") and lines[1].split()[:3] == ["NAME", "DIM", "IMAGE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == [m["name"] for m in catalog.models()]
    assert rows["qdrant-clip-vit-b-32"].split()[1:4] == ["512", "224", "77"] and "clip-vit-b-32," in rows["qdrant-clip-vit-b-32"]
    siglip2 = run_cli("models", "--family", "siglip2", "--layout", "immich").stdout.splitlines()[2:]
    assert len(siglip2) == 12 and all(" siglip2 " in r and " immich " in r for r in siglip2)
    multilingual = run_cli("models", "--multilingual", "--json")
    assert multilingual.returncode == 0, multilingual.stderr
    listed = json.loads(multilingual.stdout)
    assert listed == [m for m in list_supported_models() if m["multilingual"]]
    assert {m["family"] for m in listed} == {"siglip", "siglip2", "xlm-roberta-clip", "nllb-siglip", "m-clip"}
    bad = run_cli("models", "--family", "sigclip")
    assert bad.returncode == 2 and "--family 'sigclip': not one of clip, m-clip" in bad.stderr


# ---------------------------------------------------------------------------------------------- no drift


def test_the_json_is_what_the_generator_derives():
    """In a fresh process: other tests register tiny configs under real architecture names in open_clip's
    registry, which would change what the generator reads here."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "fastclip_export.catalog", "--check"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, f"catalog.json or docs/catalog.md differ from their sources: run python -m " \
                                f"fastclip_export.catalog\n{run.stdout[-2000:]}{run.stderr[-2000:]}"


def test_the_docs_table_is_the_json():
    from fastclip_export.catalog import DOCS_PATH, TABLE_END, TABLE_START, markdown_table

    page = DOCS_PATH.read_text(encoding="utf-8")
    table = page[page.index(TABLE_START) + len(TABLE_START):page.index(TABLE_END)].strip("\n")
    assert table == markdown_table(_raw()).strip("\n")
    assert len(table.splitlines()) == 2 + len(catalog.models())
    assert f"fastclip knows {len(catalog.models())} published" in page  # the prose's count too


def test_verified_entries_name_tests_that_exist():
    """An entry that says a test re-created and opened its layout names that test, and the test exists."""
    named = [e for e in list_supported_models() if "::" in (e.get("verified") or "")]
    assert len(named) >= 4, [e["verified"] for e in list_supported_models()][:5]
    for entry in named:
        path, test = re.search(r"(tests/\S+\.py)::(\w+)", entry["verified"]).groups()
        assert re.search(rf"^def {test}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), entry["verified"]
