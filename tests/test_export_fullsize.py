"""Full-size ViT-B/32 (random weights) round trips from open_clip and from transformers.

The tiny models prove the plumbing; these prove the real widths (12 heads, 768/512 wide, 50 and 77
tokens) export and verify within the fp32 thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastclip import ImageEmbedding, TextEmbedding, manifest
from fastclip.hashing import sha256
from fastclip_export import api

from conftest import SEED, copy_tokenizer_files
from support.parity import assert_parity
from support.photos import SENTENCES, write_photos

pytestmark = pytest.mark.slow


def _check(out):
    m = manifest.load(out)
    assert m.embed_dim == 512
    for tower in (m.vision, m.text):
        f = tower.files["fp32"]
        assert sha256(out / f.path) == f.sha256
        v = tower.verification["fp32"]
        assert v.min_cosine >= 0.99999 and v.max_abs_diff_rel <= 1e-4
    return m


def test_open_clip_vit_b_32_round_trip(tmp_path):
    out = api.export_model("open_clip:ViT-B-32", tmp_path / "m", pretrained="none", log=lambda _: None)
    m = _check(out)
    assert m.source["model"] == "ViT-B-32" and m.text.pooling == "argmax"
    assert (out / "vision" / "model.onnx").stat().st_size > 300e6

    # The runtime, end to end (its own decoding, preprocessing and tokenizer), against open_clip with
    # the same weights (random init right after the export's seed).
    import torch

    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    torch.manual_seed(SEED)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    photos = write_photos(tmp_path / "photos")
    with torch.no_grad():
        ref_img = model.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in photos])).numpy()
        ref_txt = model.encode_text(tokenizer(SENTENCES)).numpy()
    got_img = np.stack(list(ImageEmbedding(out, exif_transpose=False).embed(photos, normalize=False)))
    got_txt = np.stack(list(TextEmbedding(out).embed(SENTENCES, normalize=False)))
    assert_parity(got_img, ref_img, "open_clip ViT-B/32 image")
    assert_parity(got_txt, ref_txt, "open_clip ViT-B/32 text")


def test_hf_vit_b_32_round_trip(tmp_path):
    """CLIPConfig() defaults are ViT-B/32's shape; `pretrained='none'` builds random weights from the
    config, so the test needs no 600 MB checkpoint on disk."""
    from transformers import CLIPConfig

    ckpt = tmp_path / "clip-b32-config"
    CLIPConfig().save_pretrained(ckpt)
    copy_tokenizer_files(ckpt)
    out = api.export_model(str(ckpt), tmp_path / "m", pretrained="none", log=lambda _: None)
    m = _check(out)
    assert m.source["kind"] == "hf" and m.text.pooling == "eos" and m.vision.image_size == 224

    # The runtime, end to end, against transformers with the same weights (the export seeds 0 before
    # building the model from the config), fed open_clip's pixels and its own tokenizer.
    import torch
    from transformers import AutoTokenizer, CLIPModel

    from fastclip_export.torchvision_compat import import_open_clip

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    transform = import_open_clip().image_transform(224, is_train=False)
    photos = write_photos(tmp_path / "photos")
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p)) for p in photos])
        ref_img = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        ids = tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ref_txt = model.get_text_features(**ids).pooler_output.numpy()
    del model
    got_img = np.stack(list(ImageEmbedding(out, exif_transpose=False).embed(photos, normalize=False)))
    got_txt = np.stack(list(TextEmbedding(out).embed(SENTENCES, normalize=False)))
    assert_parity(got_img, ref_img, "transformers ViT-B/32 image")
    assert_parity(got_txt, ref_txt, "transformers ViT-B/32 text")
