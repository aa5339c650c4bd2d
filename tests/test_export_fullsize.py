"""Full-size ViT-B/32 (random weights) round trips from open_clip and from transformers.

The tiny models prove the plumbing; these prove the real widths (12 heads, 768/512 wide, 50 and 77
tokens) export and verify within the fp32 thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastclip import manifest
from fastclip_export import api, onnx_io

from conftest import copy_tokenizer_files

pytestmark = pytest.mark.slow


def _check(out):
    m = manifest.load(out)
    assert m.embed_dim == 512
    for tower in (m.vision, m.text):
        f = tower.files["fp32"]
        assert onnx_io.sha256(out / f.path) == f.sha256
        v = tower.verification["fp32"]
        assert v.min_cosine >= 0.99999 and v.max_abs_diff_rel <= 1e-4
    return m


def test_open_clip_vit_b_32_round_trip(tmp_path):
    out = api.export_model("open_clip:ViT-B-32", tmp_path / "m", pretrained="none", log=lambda _: None)
    m = _check(out)
    assert m.source["model"] == "ViT-B-32" and m.text.pooling == "argmax"
    assert (out / "vision" / "model.onnx").stat().st_size > 300e6


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
    sess = __import__("fastclip_export.verify", fromlist=["session"]).session(out / "text" / "model.onnx")
    assert sess.run(None, {"input_ids": np.array([[49406, 320, 1929, 49407]], np.int64)})[0].shape == (1, 512)
