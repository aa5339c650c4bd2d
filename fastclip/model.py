"""Resolve a model name to a local folder and its manifest.

A model name is a folder written by `fastclip export`, a single-tower folder in fastembed's layout
(`model.onnx` + `preprocessor_config.json` or tokenizer files), or a Hugging Face repo id holding
either, fetched and cached through huggingface_hub. Folders without a `fastclip.json` get a manifest
derived from their files and their ONNX graph (input/output names and dims read from the graph).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hub import not_cached, unreachable
from .manifest import FORMAT_VERSION, MANIFEST_NAME, load, parse
from .errors import ModelError, first_line
from .families.resize import from_processor_config
from .manifest import Manifest, ImageSpec

# fastembed's published CLIP ViT-B/32 towers: the default, so a new user gets vectors with no export.
DEFAULT_VISION_REPO = "Qdrant/clip-ViT-B-32-vision"
DEFAULT_TEXT_REPO = "Qdrant/clip-ViT-B-32-text"
# OpenAI's CLIP learned logit scale, clamped at 100 during training; used for folders without a manifest.
DEFAULT_LOGIT_SCALE = 100.0


def resolve_folder(
    name: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
) -> Path:
    """A local folder for `name`: the folder itself, or a hub snapshot (downloaded once, then cached)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if path.exists():
        raise ModelError(f"{text}: is a file; pass the model folder (the one holding fastclip.json or model.onnx)")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local:
        raise ModelError(f"{text}: no such model folder (and not a hub repo id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = None if local_files_only else unreachable()
    try:
        return Path(
            snapshot_download(
                repo_id=text,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir else None,
                local_files_only=local_files_only or offline is not None,
                # Skip torch weights some repos keep beside the ONNX files: the runtime never reads them.
                ignore_patterns=["*.safetensors", "*.bin", "*.pt", "*.msgpack", "*.h5"],
            )
        )
    except LocalEntryNotFoundError:
        raise ModelError(not_cached(
            text, offline, "pass a model folder instead (`--model PATH` on the command line, the model argument "
            "in Python), or make one with `fastclip export`", cache_dir)) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{text}: no such repo on the hub (or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise ModelError(f"{text}: could not fetch from the hub: {first}") from None


def load_manifest(folder: Path) -> Manifest:
    """The folder's manifest, or one derived from a fastembed-style single-tower folder."""
    if (folder / MANIFEST_NAME).is_file():
        return load(folder)
    if (folder / "model.onnx").is_file():
        try:
            derived = _derive_single_tower(folder)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # config files of unexpected shape
            raise ModelError(f"{folder}: malformed tower folder files ({type(exc).__name__}: {exc})") from None
        return parse(derived, origin=str(folder))
    raise ModelError(
        f"{folder}: neither a fastclip model folder (fastclip.json) nor a tower folder (model.onnx); "
        "export one with `fastclip export`"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got a JSON {type(data).__name__}")
    return data


def _graph_io(model_path: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """Input and output (name, shape) of an ONNX graph, read without loading the weights."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # A CPU session with no optimization is the cheapest reliable reader of names and shapes.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        s = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(f"{model_path}: onnxruntime could not load it: {first}") from None
    return [(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()]


def _pick_output(outputs: list[tuple[str, list]], preferred: str, where: str) -> tuple[str, int]:
    rank2 = [(n, s) for n, s in outputs if len(s) == 2]
    for n, s in rank2:
        if n == preferred:
            return n, s[1]
    if rank2:
        return rank2[0][0], rank2[0][1]
    raise ModelError(f"{where}: no (batch, dim) output in the graph; outputs are {outputs}")


def _derive_single_tower(folder: Path) -> dict[str, Any]:
    model_path = folder / "model.onnx"
    inputs, outputs = _graph_io(model_path)
    names = [n for n, _ in inputs]
    base = {"path": "model.onnx", "bytes": model_path.stat().st_size}
    data: dict[str, Any] = {
        "format": "fastclip",
        "format_version": FORMAT_VERSION,
        "source": {"kind": "folder", "model": str(folder)},
        "logit_scale": DEFAULT_LOGIT_SCALE,
    }
    is_vision = "pixel_values" in names or (
        (folder / "preprocessor_config.json").is_file() and not (folder / "tokenizer.json").is_file()
    )
    if is_vision:
        cfg = _read_json(folder / "preprocessor_config.json")
        pixel_input = "pixel_values" if "pixel_values" in names else names[0]
        out, dim = _pick_output(outputs, "image_embeds", str(folder))
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
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    cfg = _read_json(folder / "config.json")
    tokenizer = _read_json(folder / "tokenizer.json")
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
    out, dim = _pick_output(outputs, "text_embeds", str(folder))
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
