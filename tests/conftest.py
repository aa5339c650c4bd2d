"""Shared, session-scoped tiny models: torch references and their fastclip exports.

Tiny widths keep every export to a few seconds on a 2-core machine; the vocabulary (49408) and the
image size (224) are real, so the real tokenizer files and the runtime's preprocessing apply as is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_FIXTURE = FIXTURES / "clip-tokenizer"

TINY_OPEN_CLIP_NAME = "fastclip-tiny"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SEED = 0


def tiny_hf_config():
    from transformers import CLIPConfig  # configs import no torchvision

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=32,
    )


def copy_tokenizer_files(folder: Path) -> None:
    for f in TOKENIZER_FIXTURE.iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copyfile(f, folder / f.name)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory) -> Path:
    """A save_pretrained folder of a seeded random-init tiny CLIPModel with the real tokenizer files."""
    import torch

    from fastclip_export.torchvision_compat import import_torchvision

    import_torchvision()  # transformers imports torchvision; see torchvision_compat
    from transformers import CLIPModel

    folder = tmp_path_factory.mktemp("tiny-hf") / "tiny-clip"
    torch.manual_seed(SEED)
    CLIPModel(tiny_hf_config()).eval().save_pretrained(folder)
    copy_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_hf_export(tiny_hf_checkpoint, tmp_path_factory) -> Path:
    from fastclip_export.api import export_model

    return export_model(str(tiny_hf_checkpoint), tmp_path_factory.mktemp("tiny-hf-export") / "model",
                        log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_openclip_config(tmp_path_factory) -> Path:
    """The tiny open_clip config as a JSON file, registered with open_clip as `fastclip-tiny`."""
    from fastclip_export.torchvision_compat import import_open_clip

    path = tmp_path_factory.mktemp("tiny-openclip-config") / f"{TINY_OPEN_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG), encoding="utf-8")
    import_open_clip().add_model_config(path)
    return path


@pytest.fixture(scope="session")
def tiny_openclip_model(tiny_openclip_config):
    """(model, preprocess, tokenizer) of the tiny open_clip model: the same weights as the export
    (both are random init right after torch.manual_seed(0))."""
    import torch

    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    torch.manual_seed(SEED)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_OPEN_CLIP_NAME, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_OPEN_CLIP_NAME)


@pytest.fixture(scope="session")
def tiny_openclip_export(tiny_openclip_config, tmp_path_factory) -> Path:
    from fastclip_export.api import export_model

    return export_model(f"open_clip:{TINY_OPEN_CLIP_NAME}", tmp_path_factory.mktemp("tiny-openclip-export") / "model",
                        pretrained="none", log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_variants_export(tiny_openclip_config, tmp_path_factory) -> Path:
    """The tiny open_clip model exported in fp32, fp16 and int8, every file with external data: the
    folder the precision tests load (int8 present, so "never picked unless asked" can fail)."""
    from fastclip_export.api import export_model

    return export_model(f"open_clip:{tiny_openclip_config}", tmp_path_factory.mktemp("tiny-variants") / "model",
                        pretrained="none", precisions=["fp32", "fp16", "int8"], external_data=True, log=lambda _: None)


@pytest.fixture(scope="session")
def photos_folder(tmp_path_factory):
    """What the README's and the docs' blocks assume is at hand: cat.jpg, dog.jpg and photos/ (tests/support/docblocks)."""
    from support import docblocks

    folder = tmp_path_factory.mktemp("reader")
    docblocks.make_photos(folder)
    return folder
