"""`fastclip export --list` (derived from open_clip's configs), the memory estimate and its refusal."""

from __future__ import annotations

import json

import pytest
from support import hubcache
from support import tiny as tiny_arch

from fastclip.errors import ExportError
from fastclip_export import api, memory
from fastclip_export.open_clip_catalog import architectures
from fastclip_export.open_clip_config import config_problem
from fastclip_export.torchvision_compat import import_open_clip


def test_list_shows_every_open_clip_architecture_and_why_not(capsys):
    from fastclip.cli import main

    assert main(["export", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = len(import_open_clip().list_models())
    assert f" of {total} export both towers, {total} of {total} the image tower" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("ARCHITECTURE"))
    row = {line.split()[0]: line for line in lines[header + 1:] if line and not line.startswith(" ")}
    column = lines[header].index("STATUS")
    status = {arch: line[column:] for arch, line in row.items()}
    assert len([name for name in row if not name.startswith("transformers:")]) == total
    for arch in ("ViT-H-14", "ViT-L-14-336", "ViT-bigG-14", "ViT-B-32-quickgelu", "RN50x4", "EVA02-L-14", "convnext_base_w"):
        assert status[arch].startswith("yes"), row[arch]
    assert "QuickGELU" in row["ViT-H-14-378-quickgelu"]
    # Every vision family is tested (tests/test_families.py): nothing is left "untested".
    assert not [line for line in row.values() if "untested" in line]
    # Text families (issue 17): SigLIP's tokenizer, HF text towers, bidirectional towers and CoCa export.
    for arch in ("xlm-roberta-large-ViT-H-14", "nllb-clip-base", "ViT-H-14-CLIPA", "mt5-base-ViT-B-32",
                 "ViT-B-16-SigLIP2", "MobileCLIP2-S0", "coca_ViT-L-14", "PE-Core-L-14-336"):
        assert status[arch].startswith("yes"), row[arch]
    # The DFN weights squash the image instead of cropping it: that tag exports too, with its own resize.
    assert "refused" not in lines[lines.index(row["ViT-H-14-378-quickgelu"]) + 1]
    assert "; tags: 4 of 4 export" in row["ViT-H-14"]


def test_list_tags_gives_each_tags_preprocessing(capsys):
    from fastclip.cli import main

    assert main(["export", "--list", "--tags"]) == 0
    lines = capsys.readouterr().out.splitlines()
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("PE-Core-B-16 ")) + 1]
    assert after.strip() == "tag meta: exports (squash, bilinear, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5))"
    dfn = [line.strip() for line in lines if line.strip().startswith("tag dfn5b:")]
    assert dfn and all(line.startswith("tag dfn5b: exports (squash, bicubic") for line in dfn)


def test_list_names_the_text_towers_that_need_the_hub(tmp_path, capsys):
    """Which text towers need a tokenizer (or text model config) from the Hugging Face hub, and whether this
    machine's cache holds it: here an empty cache but for SigLIP 2's tokenizer repo."""
    from fastclip.cli import main

    home = tmp_path / "hf-home"
    hubcache.seed_repo(home / "hub", "timm/ViT-B-16-SigLIP2", {"tokenizer_config.json": "{}"})
    with hubcache.offline(home):
        assert main(["export", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    open_clip = import_open_clip()
    needs_hub = [a for a in open_clip.list_models()
                 if {"hf_tokenizer_name", "hf_model_name"} & set(open_clip.get_model_config(a)["text_cfg"])]
    total = len(open_clip.list_models())
    assert len(needs_hub) == 49  # open_clip 3.x: SigLIP (1 and 2), NLLB, XLM-R, mT5, xlm-v, BERT (CLIPA) text towers
    assert lines[1].startswith(f"text towers: {len(needs_hub)} of the {total} need a tokenizer (or text model config) "
                               "from the Hugging Face hub, fetched once and cached (1 cached here); without it, "
                               "--vision-only exports their image tower offline")
    header = next(i for i, line in enumerate(lines) if line.startswith("ARCHITECTURE"))
    row = {line.split()[0]: line for line in lines[header + 1:] if line and not line.startswith(" ")}
    assert row["ViT-B-16-SigLIP2"].endswith("; text needs hub timm/ViT-B-16-SigLIP2 (cached); tags: 1 of 1 export")
    assert "; text needs hub timm/ViT-B-16-SigLIP (not cached here)" in row["ViT-SO400M-14-SigLIP-384"]
    assert "; text needs hub xlm-roberta-base (not cached here);" in row["xlm-roberta-base-ViT-B-32"]
    assert [a for a in row if "text needs hub" in row[a]] == sorted(needs_hub, key=str.lower)
    assert "hub" not in row["ViT-B-32"]


def test_offline_hub_tokenizer_error_points_to_vision_only(tmp_path, monkeypatch, capsys):
    """SigLIP 2 offline, its tokenizer not cached: the export stops, writing nothing, says what is
    missing and that --vision-only works offline - which it then does."""
    from fastclip import manifest
    from fastclip.cli import main

    tiny_arch.register(monkeypatch, "ViT-B-16-SigLIP2")
    out = tmp_path / "siglip2"
    with hubcache.offline(tmp_path / "empty-home"):
        assert main(["export", "open_clip:ViT-B-16-SigLIP2", str(out), "--pretrained", "none"]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith("fastclip: error: open_clip:ViT-B-16-SigLIP2: the tokenizer 'timm/ViT-B-16-SigLIP2': "
                                  "not in the hub cache ")
        assert err[-1].endswith("; run the export where the hub is reachable once, or export the image tower alone "
                                "with --vision-only (towers=('vision',)), which needs nothing from the hub")
        assert not out.exists()
        assert main(["export", "open_clip:ViT-B-16-SigLIP2", str(out), "--pretrained", "none", "--vision-only"]) == 0
    assert manifest.load(out).text is None


def test_vision_only_from_the_command_line(tiny_openclip_config, tmp_path, capsys):
    from fastclip import ImageEmbedding, manifest
    from fastclip.cli import main

    out = tmp_path / "vision-only"
    assert main(["export", f"open_clip:{tiny_openclip_config}", str(out), "--pretrained", "none", "--vision-only"]) == 0
    m = manifest.load(out)
    assert m.text is None and m.vision is not None and not (out / "text").exists()
    assert ImageEmbedding(out).dim == 32


def test_list_follows_the_configs_not_a_table(tiny_openclip_config, tmp_path):
    """A config registered with open_clip appears, and its own settings decide."""
    cfg = json.loads(tiny_openclip_config.read_text())
    cfg["text_cfg"]["tokenizer_kwargs"] = {"reduction_mask": "random"}
    reduced = tmp_path / "fastclip-tiny-reduced.json"
    reduced.write_text(json.dumps(cfg))
    import_open_clip().add_model_config(reduced)
    rows = {r["architecture"]: r for r in architectures()}
    assert rows["fastclip-tiny"]["problem"] is None and rows["fastclip-tiny"]["vision"] == "ViT"
    assert "token reduction 'random'" in rows["fastclip-tiny-reduced"]["problem"]
    with pytest.raises(ExportError, match="token reduction"):
        api.export_model(f"open_clip:{reduced}", tmp_path / "m", pretrained="none", log=lambda _: None)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_listed_vit_architectures_pass_the_loader_checks():
    """Every ViT architecture --list accepts, built on the meta device (no memory, no weights), passes
    the checks the export runs on the real model: the config reading agrees with the model."""
    import torch

    from fastclip_export.open_clip_source import _text_tower
    from fastclip_export.open_clip_tokenizer import text_tokenizer
    from fastclip_export.open_clip_towers import OpenClipVisionTower

    open_clip = import_open_clip()
    checked = 0
    for row in architectures():
        if row["problem"] is not None or row["vision"] != "ViT" or row["architecture"].startswith("fastclip-"):
            continue
        text_cfg = open_clip.get_model_config(row["architecture"])["text_cfg"]
        if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"):
            continue  # their tokenizers live on the hub: test_families_text.py covers them from a seeded cache
        with torch.device("meta"):
            model = open_clip.create_model(row["architecture"], pretrained=None, device="meta")
        text_tokenizer(row["architecture"])
        _text_tower(row["architecture"], model)
        assert OpenClipVisionTower.supports(model.visual), row["architecture"]
        assert model.visual.image_size[0] == row["image_size"]
        checked += 1
    assert checked >= 25


def test_pretrained_tag_with_unknown_preprocessing_refused_before_loading(tmp_path, monkeypatch):
    from open_clip import pretrained

    real = pretrained.get_pretrained_cfg
    monkeypatch.setattr(pretrained, "get_pretrained_cfg",
                        lambda arch, tag: {**real(arch, tag), "interpolation": "lanczos"} if tag == "dfn5b" else real(arch, tag))
    assert "interpolation='lanczos'" in config_problem("ViT-H-14-378-quickgelu", "dfn5b")
    with pytest.raises(ExportError, match="lanczos"):
        api.export_model("open_clip:ViT-H-14-378-quickgelu", tmp_path / "m", pretrained="dfn5b", log=lambda _: None)


def test_memory_refusal_names_needed_and_available(tmp_path, monkeypatch):
    """ViT-bigG-14 on a machine with 8 GB: refused in a moment (counted on the meta device), with the
    parameter count, the estimate, what sets it and what is available."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 8e9)
    with pytest.raises(ExportError) as info:
        api.export_model("open_clip:ViT-bigG-14", tmp_path / "m", pretrained="none", precisions=["fp32", "int8"],
                         log=lambda _: None)
    message = str(info.value)
    est = api.estimate_memory("open_clip:ViT-bigG-14", "none", ["fp32", "int8"])
    assert (est.vision_params, est.text_params) == (1_844_907_264, 694_659_841)
    assert f"needs about {est.peak_bytes / 1e9:.1f} GB" in message and "8.0 GB available" in message
    assert "2.54 B parameters" in message and est.stage in message and "--ignore-memory-estimate" in message
    assert "fewer precisions would not lower it" in message
    assert not (tmp_path / "m").exists()

    # Were int8 the costly stage, the message would say what fp32 alone needs.
    monkeypatch.setattr(memory, "VARIANT", {**memory.VARIANT, "int8": 5.0})
    with pytest.raises(ExportError, match=r"--precision fp32 needs about \d+\.\d GB"):
        api.export_model("open_clip:ViT-bigG-14", tmp_path / "m", pretrained="none", precisions=["fp32", "int8"],
                         log=lambda _: None)


def test_memory_estimate_grows_with_the_model_and_the_precisions():
    small = memory.estimate(88_000_000, 63_000_000, ["fp32"])
    big = memory.estimate(632_076_800, 354_032_641, ["fp32"])
    assert big.peak_bytes > small.peak_bytes > memory.BASE_BYTES
    assert memory.estimate(632_076_800, 354_032_641, ["fp32", "fp16", "int8"]).peak_bytes >= big.peak_bytes
    # The text tower is traced first and freed: tracing bigG's vision tower does not hold its text weights.
    giant = memory.estimate(1_844_907_264, 694_659_841, ["fp32"])
    assert giant.stage == "tracing the vision tower"
    vision_alone = memory.estimate(1_844_907_264, 1, ["fp32"])
    assert giant.peak_bytes == pytest.approx(vision_alone.peak_bytes, rel=1e-6)


def test_hf_parameters_counted_from_the_config(tiny_hf_checkpoint):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_hf_checkpoint)
    vision = sum(p.numel() for m in (model.vision_model, model.visual_projection) for p in m.parameters())
    assert api.count_parameters(str(tiny_hf_checkpoint), None) == (vision, sum(p.numel() for p in model.parameters()) - vision)


def test_list_status_states_memory_against_this_machine():
    from fastclip.cli.export import _status

    row = {"architecture": "ViT-bigG-14", "problem": None, "vision_problem": None, "vision": "ViT", "quick_gelu": False,
           "peak_bytes": 25.0e9}
    assert _status(row, frozenset({"ViT"}), 18.5e9) == "yes; ~25.0 GB peak > 18.5 GB available here"
    assert _status({**row, "peak_bytes": 4.2e9}, frozenset({"ViT"}), 18.5e9) == "yes; ~4.2 GB peak"
    text_refused = {**row, "problem": "tokenizer x is not CLIP's BPE", "peak_bytes": None, "vision": "timm foo"}
    assert _status(text_refused, frozenset({"ViT"}), None) == (
        "image tower only (text refused: tokenizer x is not CLIP's BPE); untested family: timm foo traced as is, "
        "verification decides")
