"""The preprocessing an open_clip export records, per pretrained tag (export/open_clip_config.py).

A tag's weights come with the tag's preprocessing; random weights (`--pretrained none`) and a checkpoint file
follow `--preprocess TAG`, else the one every tag of the architecture agrees on. Each test registers a tiny
model under a real architecture's name (a 1-block ViT at the real input size; open_clip's pretrained registry
keeps the real tags), exports it through the CLI or the Python API, and compares the manifest with the
tag's values written out here, and the runtime's pixels with the transform open_clip builds for the tag
(its weights seeded into an offline hub cache, so `create_model_and_transforms(ARCH, pretrained=TAG)` runs
as it would online).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support import hubcache
from support import tiny as tiny_arch
from support.photos import PHOTO_NAMES, cosines, photo_array, write_photos

from fastclip import ImageEmbedding, manifest
from fastclip.errors import ExportError
from fastclip.images import preprocess

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL's filter numbers, as preprocessor_config.json's "resample" writes them.
BILINEAR, BICUBIC = 2, 3


def _open_clip():
    from fastclip_export.torchvision_compat import import_open_clip

    return import_open_clip()


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """register(ARCH) puts a tiny model under ARCH's real name for this test (support/tiny.py) and returns
    a function that seeds `tag`'s weights - the export's random weights, seed 0 - into an offline hub
    cache and gives (open_clip model, transform) for the tag."""
    import torch
    from safetensors.torch import save_file

    open_clip = _open_clip()  # before any open_clip import: see fastclip_export.torchvision_compat
    from open_clip.pretrained import get_pretrained_cfg

    home = tmp_path / "hf-home"

    def register(arch: str):
        tiny_arch.register(monkeypatch, arch)

        def reference(tag: str):
            torch.manual_seed(0)  # what export_model does before building: the same random weights
            model = open_clip.create_model(arch, pretrained=None)
            snapshot = hubcache.seed_repo(home / "hub", get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/"), {})
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
            with hubcache.offline(home):
                model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=tag)
            return model.eval(), transform

        return reference

    return register


def _assert_runtime_equals_the_tag(folder, model, transform, tmp_path):
    """The runtime's pixels on real photos equal open_clip's transform for the tag, bit for bit (the
    exact path is measured at 0.0 in tests/test_families.py), and its vectors equal encode_image."""
    import torch

    spec = manifest.load(folder).vision
    for name in PHOTO_NAMES:
        image = Image.fromarray(photo_array(name))
        assert float(np.abs(preprocess(image, spec) - transform(image).numpy()).max()) == 0.0, name
    paths = write_photos(tmp_path / "photos", PHOTO_NAMES[:4])
    got = np.stack(list(ImageEmbedding(folder, exif_transpose=False).embed(paths, normalize=False)))
    with torch.no_grad():
        want = model.encode_image(torch.stack([transform(Image.open(p)) for p in paths])).numpy()
    # The export's own fp32 bounds (fastclip_export.verify.THRESHOLDS).
    assert cosines(got, want).min() >= 0.99999 and np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# (architecture, its one tag, the tag's preprocessing as open_clip's pretrained registry writes it:
#  resize mode, filter, mean, std, input size)
AGREEING = [
    ("ViT-B-16-SigLIP2", "webli", "squash", "bicubic", (0.5,) * 3, (0.5,) * 3, 224),
    ("PE-Core-B-16", "meta", "squash", "bilinear", (0.5,) * 3, (0.5,) * 3, 224),
    ("MobileCLIP2-S0", "dfndr2b", "shortest", "bilinear", (0.0,) * 3, (1.0,) * 3, 256),
]


@pytest.mark.parametrize("arch,tag,resize_mode,interpolation,mean,std,size", AGREEING, ids=[a[0] for a in AGREEING])
def test_random_weights_record_the_tags_preprocessing(tiny, tmp_path, capsys, arch, tag, resize_mode, interpolation,
                                                      mean, std, size):
    """`fastclip export open_clip:ARCH OUT --pretrained none --vision-only`: every tag of these architectures
    preprocesses alike, so the export records that preprocessing - not open_clip's defaults for untagged
    weights (shortest-side resize + crop, bicubic, OpenAI mean/std), which fastclip recorded before."""
    from fastclip.cli import main

    reference = tiny(arch)
    out = tmp_path / "model"
    assert main(["export", f"open_clip:{arch}", str(out), "--pretrained", "none", "--vision-only"]) == 0
    v = manifest.load(out).vision
    assert (v.resize_mode, v.interpolation, v.mean, v.std, v.image_size) == (resize_mode, interpolation, mean, std, size)
    assert f"preprocessing of pretrained tag {tag}: {resize_mode}, {interpolation}" in capsys.readouterr().err
    config = json.loads((out / "vision" / "preprocessor_config.json").read_text())
    assert config["resample"] == {"bilinear": BILINEAR, "bicubic": BICUBIC}[interpolation]
    assert config["do_center_crop"] == (resize_mode == "shortest")
    assert (tuple(config["image_mean"]), tuple(config["image_std"])) == (mean, std)
    assert json.loads((out / manifest.MANIFEST_NAME).read_text())["source"] == {
        "kind": "open_clip", "model": arch, "pretrained": "none", "preprocess": tag}
    _assert_runtime_equals_the_tag(out, *reference(tag), tmp_path)


def test_checkpoint_file_follows_the_preprocess_tag(tiny, tmp_path):
    """ViT-L-14's tags disagree (laion2b_s32b_b82k normalizes with mean/std 0.5, the others with OpenAI's):
    a checkpoint file is refused until --preprocess says which it follows, then exported with that one."""
    import torch

    from fastclip_export.api import export_model

    reference = tiny("ViT-L-14")
    model, transform = reference("laion2b_s32b_b82k")
    checkpoint = tmp_path / "l14.pt"
    torch.save(model.state_dict(), checkpoint)
    with pytest.raises(ExportError, match=r"--preprocess TAG") as info:
        export_model("open_clip:ViT-L-14", tmp_path / "refused", pretrained=str(checkpoint), log=lambda _: None)
    assert "laion2b_s32b_b82k: shortest, bicubic, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in str(info.value)
    assert "openai, laion400m_e31" in str(info.value) and "the checkpoint l14.pt" in str(info.value)
    assert not (tmp_path / "refused").exists()

    out = export_model("open_clip:ViT-L-14", tmp_path / "model", pretrained=str(checkpoint),
                       preprocess="laion2b_s32b_b82k", log=lambda _: None)
    m = manifest.load(out)
    assert (m.vision.resize_mode, m.vision.interpolation, m.vision.mean, m.vision.std) == (
        "shortest", "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert m.source == {"kind": "open_clip", "model": "ViT-L-14", "pretrained": "l14.pt", "preprocess": "laion2b_s32b_b82k"}
    assert m.text is not None
    _assert_runtime_equals_the_tag(out, model, transform, tmp_path)


def test_disagreeing_tags_refused_before_anything_loads(tmp_path, capsys):
    """ViT-H-14 with random weights: dfn5b squashes, its other tags crop. The refusal lists both, comes
    before the memory estimate and the model (a moment, no full-size model built), and names the fix."""
    from fastclip.cli import main

    out = tmp_path / "h14"
    assert main(["export", "open_clip:ViT-H-14", str(out), "--pretrained", "none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastclip: error: open_clip:ViT-H-14: its pretrained tags preprocess differently") \
        and "--preprocess TAG" in err
    assert "dfn5b: squash, bicubic, mean (0.4815, 0.4578, 0.4082), std (0.2686, 0.2613, 0.2758), size 224" in err
    assert "laion2b_s32b_b79k, metaclip_fullcc, metaclip_altogether: shortest, bicubic" in err
    assert "loading" not in err and not out.exists()


def test_preprocess_mistakes_are_named(tmp_path, tiny_hf_checkpoint):
    from fastclip_export.api import export_model

    def refused(match, model="open_clip:ViT-H-14", **kw):
        with pytest.raises(ExportError, match=match):
            export_model(model, tmp_path / "m", log=lambda _: None, **kw)
        assert not (tmp_path / "m").exists()

    refused(r"--preprocess 'dfn5' is not a pretrained tag of open_clip:ViT-H-14; close matches: dfn5b",
            pretrained="none", preprocess="dfn5")
    refused(r"--preprocess dfn5b with --pretrained laion2b_s32b_b79k: a tag's weights come with the tag's own",
            pretrained="laion2b_s32b_b79k", preprocess="dfn5b")
    refused(r"has no pretrained tags", model="open_clip:mt5-base-ViT-B-32", pretrained="none", preprocess="webli")
    refused(r"transformers model, whose preprocessor_config.json", model=str(tiny_hf_checkpoint), preprocess="openai")
