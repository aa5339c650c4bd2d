"""Load a transformers `SiglipModel` (SigLIP, and SigLIP 2 at fixed resolution) as a `Source`.

What the model card runs is the reference: the folder's image processor (SiglipImageProcessor: a plain
resize of both sides to the model's size - "squash" - then rescale and normalize) and its tokenizer with
`padding="max_length"`, whose `input_ids` and `attention_mask` both go to `get_text_features`.

* Text: SiglipTextModel pools the last position, which is padding for most texts, and its position ids count
  from the first column, so only the full context the card pads to gives the reference's vectors (no
  batch-longest padding, `dynamic_length` False). The attention mask is a graph input when the tokenizer returns
  one (the fixed-resolution SigLIP 2 checkpoints' Gemma tokenizer does). The tokenizer must have a
  tokenizer.json: SigLIP 1's SiglipTokenizer is SentencePiece-only, with its own Python canonicalization and
  an "<unk>"-prefix trick, so it is refused with a pointer to the same weights in open_clip (timm/...).
* `Siglip2Model` (NaFlex) is refused: its processor resizes each image to its own patch grid under a patch
  budget, keeping the aspect ratio, and feeds `pixel_attention_mask` and `spatial_shapes` with the patches; a
  fixed-size image graph would not reproduce it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fastclip.errors import ExportError

from .source import Source

NAFLEX_REFUSAL = (
    "is a Siglip2Model (SigLIP 2 NaFlex): its processor resizes every image to its own patch grid under a patch "
    "budget, keeping the aspect ratio, and the model takes pixel_attention_mask and spatial_shapes with the "
    "patches; fastclip runs fixed-size image graphs, so NaFlex is not exported. The fixed-resolution SigLIP 2 "
    "checkpoints (google/siglip2-*-patch16-224/256/384/512, SiglipModel) and open_clip's ViT-*-SigLIP2 export."
)


# Each wrapper holds its own tower only (SiglipModel.get_*_features is that tower's pooler_output): the export
# frees a tower's weights once it is traced, and the other must keep its own.
class SiglipText(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class SiglipVision(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


def _image_settings(name: str, path: Path | None, size: int) -> dict:
    from fastclip.families.resize import from_processor_config

    if path is None:
        raise ExportError(f"{name}: no preprocessor_config.json; the SigLIP image preprocessing is not known")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    try:
        image = from_processor_config(cfg, size)
    except ValueError as exc:
        raise ExportError(f"{name}: {path.name}: {exc}; fastclip cannot reproduce it") from None
    if (image["resize_mode"] != "squash" or image["image_size"] != size or not cfg.get("do_normalize", True)
            or abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12):
        raise ExportError(f"{name}: preprocessing {cfg} is not a {size}x{size} resize (bicubic or bilinear) + "
                          "rescale + normalize; fastclip cannot reproduce it")
    return dict(image, mean=tuple(float(v) for v in cfg.get("image_mean", (0.5, 0.5, 0.5))),
                std=tuple(float(v) for v in cfg.get("image_std", (0.5, 0.5, 0.5))))


def load_hf_siglip(name: str, config, local: dict[str, Path | None], preprocessor: Path | None,
                   load_model) -> Source:
    """`local`: the tokenizer files fetched (name -> path or None); `load_model(cls)`: the checkpoint's weights
    (or random ones) in transformers class `cls`."""
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    if local.get("tokenizer.json") is None:
        raise ExportError(
            f"{name}: the tokenizer has no tokenizer.json (SigLIP 1's SiglipTokenizer is SentencePiece-only, with "
            "Python-side canonicalization); fastclip runs tokenizer.json only. The same weights export from open_clip: "
            "fastclip export open_clip:ViT-B-16-SigLIP OUT --pretrained webli (and the other ViT-*-SigLIP tags)")
    image = _image_settings(name, preprocessor, int(config.vision_config.image_size))
    tokenizer = AutoTokenizer.from_pretrained(str(local["tokenizer.json"].parent))
    context = int(config.text_config.max_position_embeddings)
    with_mask = "attention_mask" in tokenizer.model_input_names
    siglip = load_model(SiglipModel).eval()
    # transformers 5 resizes with torchvision on tensors by default; its PIL backend is the one fastclip's
    # resize reproduces pixel for pixel (measured on a tiny SigLIP: the torchvision backend moves features by
    # up to 8.6e-4 x their max, cosine 0.9999996).
    processor = AutoImageProcessor.from_pretrained(str(preprocessor.parent), backend="pil")

    def tokenize_with_mask(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer(texts, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenize_with_mask(texts)[0]

    def write_tokenizer(out_dir: Path) -> None:
        from .tokenizer_files import write_hf_tokenizer

        write_hf_tokenizer(out_dir, tokenizer, context)

    def preprocess(img) -> torch.Tensor:
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    if pad is None or eos is None:
        raise ExportError(f"{name}: the tokenizer has no pad or end token")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
    text = SiglipText(siglip)
    bias = getattr(siglip, "logit_bias", None)
    source = Source(
        kind="hf",
        description={"kind": "hf", "model": name, "pretrained": None},
        architecture=name,
        embed_dim=int(config.text_config.projection_size if getattr(config.text_config, "projection_size", None)
                      else config.text_config.hidden_size),
        logit_scale=float(siglip.logit_scale.detach().exp().reshape(-1)[0]),
        logit_bias=None if bias is None else float(bias.detach().reshape(-1)[0]),
        vision=SiglipVision(siglip),
        text=text,
        image_size=image["image_size"],
        mean=image["mean"],
        std=image["std"],
        preprocess=preprocess,
        context_length=context,
        bos_token_id=int(bos),
        eos_token_id=int(eos),
        pad_token_id=int(pad),
        pooling="last",
        cleaning="none",
        tokenize=tokenize,
        write_tokenizer=write_tokenizer,
        dynamic_length=False,
        padding_side=str(tokenizer.padding_side),
        attention_mask_input="attention_mask" if with_mask else None,
        tokenize_with_mask=tokenize_with_mask if with_mask else None,
    )
    # Image recipe and scoring by the names the manifest's vision spec uses (fastclip.manifest.RESIZE_MODES,
    # SCORINGS): sigmoid(logit_scale * cos + logit_bias) per label is how SigLIP was trained.
    source.resize_mode = image["resize_mode"]
    source.interpolation = image["interpolation"]
    source.scoring = "sigmoid"
    return source
