"""Load a transformers CLIPModel (hub id or save_pretrained folder) as a `Source`.

`pretrained` is the hub revision, or `none` for random weights built from the checkpoint's config
(seeded, so two exports are identical) - the cheap way to export a full-size architecture without
its weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fastclip import hub
from fastclip.errors import ExportError, first_line

from .hf_towers import FullTextTower, FullVisionTower, towers
from .source import Source
from .torchvision_compat import import_open_clip, import_torchvision

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


def _hub_error(model: str, exc: BaseException) -> ExportError:
    """One line for a failed hub request: not cached while offline, no such repo, or the hub's own first line."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    reason = hub.unreachable()
    if reason is not None or isinstance(exc, LocalEntryNotFoundError):
        return ExportError(hub.not_cached(
            model, reason, f"run the export where the hub is reachable (or after `hf download {model}` there, "
            "copying the cache), or pass a local folder written by save_pretrained"))
    if isinstance(exc, RepositoryNotFoundError):
        return ExportError(f"{model}: no such repo on the Hugging Face hub (or it is private: log in with `hf auth login`)")
    return ExportError(f"{model}: could not get it from the Hugging Face hub: {first_line(exc)}")


def _fetch(model: str, revision: str | None, name: str) -> Path | None:
    """Local path of one file of the checkpoint, or None when the checkpoint has no such file."""
    folder = Path(model)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        raise ExportError(f"{model}: no such folder (and not a Hugging Face model id)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hub.go_offline_if_unreachable()
    try:
        return Path(hf_hub_download(model, name, revision=revision))
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: check it first
        raise _hub_error(model, exc) from None
    except EntryNotFoundError:
        return None
    except Exception as exc:  # offline, unknown repo, HTTP errors: all one line for the user
        raise _hub_error(model, exc) from None


def _image_settings(model: str, revision: str | None, config) -> dict:
    """The Source's image settings from preprocessor_config.json (see fastclip.families.resize.from_processor_config)."""
    from fastclip.families.resize import from_processor_config

    size = int(config.vision_config.image_size)
    path = _fetch(model, revision, "preprocessor_config.json")
    if path is None:  # CLIPImageProcessor's defaults
        return dict(image_size=size, mean=DEFAULT_MEAN, std=DEFAULT_STD)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    try:
        image = from_processor_config(cfg, size)
    except ValueError as exc:
        raise ExportError(f"{model}: {path.name}: {exc}; fastclip cannot reproduce it") from None
    if image["image_size"] != size:
        raise ExportError(f"{model}: {path.name} resizes to {image['image_size']} px, the model takes {size} px")
    return dict(image, mean=tuple(float(v) for v in cfg.get("image_mean", DEFAULT_MEAN)),
                std=tuple(float(v) for v in cfg.get("image_std", DEFAULT_STD)))


def _config(model: str, revision: str | None):
    from transformers import AutoConfig

    config_path = _fetch(model, revision, "config.json")
    if config_path is None:
        raise ExportError(f"{model}: no config.json; not a transformers checkpoint")
    try:
        config = AutoConfig.from_pretrained(str(config_path.parent))
    except (ValueError, KeyError, OSError) as exc:
        raise ExportError(f"{model}: unreadable config.json ({first_line(exc)[:200]})") from None
    if config.model_type == "siglip2":
        from .hf_siglip import NAFLEX_REFUSAL

        raise ExportError(f"{model} {NAFLEX_REFUSAL}")
    if config.model_type not in ("clip", "siglip"):
        raise ExportError(f"{model} is a {config.model_type!r} checkpoint, not CLIP or SigLIP "
                          "(model_type 'clip' or 'siglip')")
    return config


def count_parameters(model: str, pretrained: str | None) -> tuple[int, int]:
    """(vision, text) parameter counts from the checkpoint's config, built on the meta device."""
    import_torchvision()
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    random_init = pretrained is not None and pretrained.lower() == "none"
    config = _config(model, None if random_init else pretrained)
    if config.model_type == "siglip":
        from transformers import SiglipModel as CLIPModel  # noqa: N806 - same counting, SigLIP's class
    with torch.device("meta"):
        clip = CLIPModel(config)
    heads = [clip.vision_model] + ([clip.visual_projection] if hasattr(clip, "visual_projection") else [])
    vision = sum(p.numel() for m in heads for p in m.parameters())
    return vision, sum(p.numel() for p in clip.parameters()) - vision


def load_hf(model: str, pretrained: str | None) -> Source:
    import_torchvision()  # transformers' CLIP imports torchvision, which needs the CPU-torch workaround
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    random_init = pretrained is not None and pretrained.lower() == "none"
    revision = None if random_init else pretrained
    config = _config(model, revision)

    local = {name: _fetch(model, revision, name) for name in TOKENIZER_FILES}
    if config.model_type == "siglip":
        from .hf_siglip import load_hf_siglip

        def load_model(cls):
            if random_init:
                torch.manual_seed(0)
                return cls(config)
            try:
                return cls.from_pretrained(model, revision=revision)
            except OSError as exc:
                raise _hub_error(model, exc) from None

        source = load_hf_siglip(model if not Path(model).is_dir() else Path(model).name, config, local,
                                _fetch(model, revision, "preprocessor_config.json"), load_model)
        source.description.update(revision=revision, pretrained="none" if random_init else None)
        return source
    image = _image_settings(model, revision, config)
    if local["tokenizer.json"] is None or local["tokenizer_config.json"] is None:
        raise ExportError(f"{model}: no tokenizer.json / tokenizer_config.json; cannot export the text tower")

    try:
        if random_init:
            torch.manual_seed(0)
            clip = CLIPModel(config)
        else:
            clip = CLIPModel.from_pretrained(model, revision=revision)
    except OSError as exc:
        raise _hub_error(model, exc) from None
    clip.eval()
    vision, text = towers(clip)
    tokenizer = AutoTokenizer.from_pretrained(str(local["tokenizer.json"].parent))

    text_cfg = config.text_config
    context_length = int(min(text_cfg.max_position_embeddings, tokenizer.model_max_length))
    eos = int(text_cfg.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # transformers pools at the highest id for legacy configs whose eos_token_id is 2, else at the
    # first eos token.
    pooling = "argmax" if eos == 2 else "eos"
    if pooling == "argmax":
        eos = int(tokenizer.eos_token_id)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", truncation=True, max_length=context_length,
                         return_tensors="pt")["input_ids"].long()

    def write_tokenizer(out_dir: Path) -> None:
        for name, path in local.items():
            if path is not None:
                shutil.copyfile(path, out_dir / name)

    def preprocess(pil):
        return import_open_clip().transform.image_transform(
            image["image_size"], is_train=False, mean=image["mean"], std=image["std"],
            resize_mode=image.get("resize_mode"), interpolation=image.get("interpolation"))(pil)

    description = {"kind": "hf", "model": model if not Path(model).is_dir() else Path(model).name,
                   "revision": revision, "pretrained": "none" if random_init else None}
    return Source(
        kind="hf",
        description=description,
        architecture=description["model"],
        embed_dim=int(config.projection_dim),
        logit_scale=float(clip.logit_scale.detach().exp()),
        logit_bias=None,
        vision=vision,
        text=text,
        **image,
        preprocess=preprocess,
        context_length=context_length,
        bos_token_id=int(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else text_cfg.bos_token_id),
        eos_token_id=eos,
        pad_token_id=int(pad),
        pooling=pooling,
        cleaning="none",
        tokenize=tokenize,
        write_tokenizer=write_tokenizer,
        reference_vision=FullVisionTower(clip),
        reference_text=FullTextTower(clip),
    )
