"""Tiny models registered under real open_clip architecture names, for one test.

open_clip's pretrained registry is keyed by architecture name, so a tiny config under the real name keeps
the real tags - their preprocessing, their hub repos - while building in a moment: a 1-block ViT at the
architecture's own input size and a 1-layer text tower of its own kind.
"""

from __future__ import annotations


def register(monkeypatch, arch: str) -> dict:
    """Put a tiny config under `arch` until the test ends (monkeypatch restores the real one); return it."""
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()  # before any open_clip import: see fastclip_export.torchvision_compat
    from open_clip import factory

    cfg = open_clip.get_model_config(arch)
    size = cfg["vision_cfg"].get("image_size", 224)
    cfg.update(embed_dim=16, vision_cfg={"image_size": size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32})
    cfg["text_cfg"].update(width=32, heads=2, layers=1)
    cfg.pop("quick_gelu", None)
    monkeypatch.setitem(factory._MODEL_CONFIGS, arch, cfg)
    return cfg
