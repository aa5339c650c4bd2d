"""fastembed's single-tower folder: `model.onnx` plus `preprocessor_config.json` (image) or tokenizer files
(text), as fastembed publishes CLIP's towers (Qdrant/clip-ViT-B-32-vision / -text). The manifest comes from
those files and the graph's input/output names and dims.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..families.resize import from_processor_config
from ..manifest import FORMAT_VERSION, ImageSpec, Manifest
from .graph import graph_io, manifest_from, pick_output, read_json
from .origin import known_logit_scale, repo_of



def matches(folder: Path) -> bool:
    return (folder / "model.onnx").is_file()


def read(folder: Path) -> Manifest:
    return manifest_from(folder, _derive_single_tower, "tower")


def _derive_single_tower(folder: Path) -> dict[str, Any]:
    model_path = folder / "model.onnx"
    inputs, outputs = graph_io(model_path)
    names = [n for n, _ in inputs]
    base = {"path": "model.onnx", "bytes": model_path.stat().st_size}
    data: dict[str, Any] = {
        "format": "fastclip",
        "format_version": FORMAT_VERSION,
        "source": {"kind": "folder", "layout": "fastembed", "model": str(folder), "repo": repo_of(folder)},
        # fastembed's folders carry no logit scale: only a repo known to be OpenAI CLIP ViT-B/32 has one.
        "logit_scale": known_logit_scale(folder),
    }
    is_vision = "pixel_values" in names or (
        (folder / "preprocessor_config.json").is_file() and not (folder / "tokenizer.json").is_file()
    )
    if is_vision:
        cfg = read_json(folder / "preprocessor_config.json")
        pixel_input = "pixel_values" if "pixel_values" in names else names[0]
        out, dim = pick_output(outputs, "image_embeds", str(folder))
        try:
            image = from_processor_config(cfg)
        except ValueError as exc:
            raise ModelError(f"{folder / 'preprocessor_config.json'}: {exc}") from None
        data.update(
            architecture="unknown",
            embed_dim=dim,
            vision={
                "input_name": pixel_input,
                "output_name": out,
                "files": {"fp32": base},
                **image,
                "mean": cfg.get("image_mean", list(ImageSpec.mean)),
                "std": cfg.get("image_std", list(ImageSpec.std)),
            },
        )
        return data
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: model.onnx without preprocessor_config.json or tokenizer.json; which tower is it?")
    tok_cfg = read_json(folder / "tokenizer_config.json")
    cfg = read_json(folder / "config.json")
    tokenizer = read_json(folder / "tokenizer.json")
    token_ids = {**tokenizer.get("model", {}).get("vocab", {}), **{t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}}

    def token_id(key: str, default: str) -> int:
        # tokenizer_config.json names a token as a string or as an AddedToken-like {"content": ...}.
        value = tok_cfg.get(key) or default
        name = value.get("content", default) if isinstance(value, dict) else value
        if name not in token_ids:
            raise ModelError(f"{folder}: tokenizer has no {key} {name!r}")
        return int(token_ids[name])

    bos = token_id("bos_token", "<|startoftext|>")
    eos = token_id("eos_token", "<|endoftext|>")
    # transformers' CLIP pads with the end token; the pad id only fills positions the causal tower ignores.
    pad = int(cfg.get("pad_token_id", token_id("pad_token", "<|endoftext|>")))
    ids_input = "input_ids" if "input_ids" in names else names[0]
    ids_shape = dict(inputs)[ids_input]
    out, dim = pick_output(outputs, "text_embeds", str(folder))
    context = int(min(tok_cfg.get("model_max_length", 77), cfg.get("max_position_embeddings", 77), 77))
    data.update(
        architecture="unknown",
        embed_dim=dim,
        text={
            "input_name": ids_input,
            "output_name": out,
            "files": {"fp32": base},
            "tokenizer": "tokenizer.json",
            "cleaning": "none",
            "context_length": context,
            # A fixed sequence axis in the graph means every batch must be padded to it.
            "dynamic_length": not (len(ids_shape) == 2 and isinstance(ids_shape[1], int)),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "pooling": "eos",
            "attention_mask_input": "attention_mask" if "attention_mask" in names else None,
        },
    )
    return data
