"""`export_model`: a reference CLIP model -> a verified fastclip model folder.

load reference (hf_source / open_clip_source) -> trace each tower to ONNX -> fp16 / int8 variants
-> verify every file against torch -> write tokenizer, preprocessor config, manifest -> rename the
finished temp folder into place. Any failure removes the temp folder, so OUT_DIR either holds a
complete, verified export or is left as it was.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from fastclip import manifest
from fastclip.families.resize import PIL_RESAMPLE
from fastclip.errors import ExportError

from . import memory, onnx_io, variants, verify
from .source import Source

if TYPE_CHECKING:
    from .open_clip_config import Plan

OPEN_CLIP_PREFIX = "open_clip:"
VARIANT_NAMES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


TOWERS = ("vision", "text")


@dataclass(frozen=True)
class Target:
    """The model of one export, resolved once: what the memory estimate counts and the loader loads."""

    model: str
    pretrained: str | None
    towers: tuple[str, ...]
    open_clip: Plan | None = None  # open_clip:ARCH, resolved and checked from its configs


def resolve(model: str, pretrained: str | None, towers: Sequence[str] = TOWERS, preprocess: str | None = None) -> Target:
    """`model` resolved and checked before anything is loaded (ExportError when it cannot export exactly)."""
    towers = tuple(t for t in TOWERS if t in towers)
    if model.startswith(OPEN_CLIP_PREFIX):
        from .open_clip_config import resolve as resolve_open_clip

        return Target(model, pretrained, towers, resolve_open_clip(model[len(OPEN_CLIP_PREFIX):], pretrained, towers,
                                                                   preprocess))
    if preprocess is not None:
        raise ExportError(f"--preprocess {preprocess} names an open_clip pretrained tag; {model} is a transformers "
                          "model, whose preprocessor_config.json says how it preprocesses")
    return Target(model, pretrained, towers)


def load_source(model: str, pretrained: str | None, towers: Sequence[str] = TOWERS,
                preprocess: str | None = None) -> Source:
    return _load(resolve(model, pretrained, towers, preprocess))


def _load(target: Target) -> Source:
    if target.open_clip is not None:
        from .open_clip_source import load_open_clip

        return load_open_clip(target.open_clip)
    from .hf_source import load_hf

    source = load_hf(target.model, target.pretrained)
    if "text" not in target.towers:
        source.text = None
    return source


def count_parameters(model: str, pretrained: str | None, towers: Sequence[str] = TOWERS) -> tuple[int, int]:
    """(vision, text) parameter counts, without loading weights; text 0 when only the image tower is exported."""
    if model.startswith(OPEN_CLIP_PREFIX):
        from .open_clip_source import count_parameters as count

        return count(model[len(OPEN_CLIP_PREFIX):], tuple(towers))
    return _count(Target(model, pretrained, tuple(towers)))


def _count(target: Target) -> tuple[int, int]:
    if target.open_clip is not None:
        from .open_clip_source import plan_parameters

        return plan_parameters(target.open_clip)
    from .hf_source import count_parameters as count

    vision, text = count(target.model, target.pretrained)
    return vision, text if "text" in target.towers else 0


def estimate_memory(model: str, pretrained: str | None, precisions: Sequence[str],
                    towers: Sequence[str] = TOWERS) -> memory.Estimate:
    return _estimate(count_parameters(model, pretrained, towers), pretrained, precisions)


def _estimate(params: tuple[int, int], pretrained: str | None, precisions: Sequence[str]) -> memory.Estimate:
    checkpoint = pretrained is not None and pretrained.lower() != "none"
    return memory.estimate(*params, precisions, checkpoint=checkpoint)


def export_model(model: str, out_dir: str | Path, *, pretrained: str | None = None,
                 precisions: Sequence[str] = ("fp32",), overwrite: bool = False,
                 external_data: bool | None = None, check_memory: bool = True,
                 log: Callable[[str], None] = print, towers: Sequence[str] = TOWERS,
                 preprocess: str | None = None) -> Path:
    """Export `model` into `out_dir` and return it.

    `model`: a Hugging Face id or save_pretrained folder of a CLIPModel, or `open_clip:ARCH`
    (ARCH may also be a model-config .json file). `pretrained`: the open_clip tag or checkpoint
    file, the hub revision for HF, or `none` for random weights. `external_data`: None stores
    weights outside the graph only when a tower is over 2 GB; True forces it. `check_memory`: refuse
    (ExportError) before loading anything when the estimated peak memory exceeds what is available.
    `towers=("vision",)`: the image tower alone (the folder then serves ImageEmbedding only).
    `preprocess`: the open_clip pretrained tag whose preprocessing random weights or a checkpoint file
    follow; needed only when the architecture's tags preprocess differently (a tag brings its own).
    """
    towers = tuple(t for t in TOWERS if t in towers)
    if "vision" not in towers:
        raise ExportError(f"towers must include 'vision' (got {tuple(towers)}); a text tower alone is not exported")
    out_dir = Path(out_dir)
    precisions = list(dict.fromkeys(p.strip().lower() for p in precisions))
    unknown = [p for p in precisions if p not in VARIANT_NAMES]
    if unknown:
        raise ExportError(f"unknown precision {unknown[0]!r} (choose from {', '.join(VARIANT_NAMES)})")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the other variants are made from it and the runtime's default
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it")

    started = time.perf_counter()
    target = resolve(model, pretrained, towers, preprocess)
    if check_memory:
        est = _estimate(_count(target), pretrained, precisions)
        available = memory.available_bytes()
        memory.check(model, est, precisions, available)
        log(f"{model}: {est.params / 1e6:.0f} M parameters, estimated peak memory {est.peak_bytes / memory.GB:.1f} GB"
            + (f" ({available / memory.GB:.1f} GB available)" if available else ""))
    log(f"loading {model}" + (f" ({pretrained})" if pretrained else ""))
    plan = target.open_clip
    if plan is not None and plan.preprocess is not None and plan.preprocess != plan.weights:
        from .open_clip_config import summary

        log(f"preprocessing of pretrained tag {plan.preprocess}: {summary(plan.image)}, size {plan.image['image_size']}")
    torch.manual_seed(0)  # random-weight exports are reproducible
    source = _load(target)
    log(f"loaded{_peak_rss()}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        _write_folder(source, tmp, precisions, external_data, log)
        if out_dir.exists():
            # Move the old folder aside first so the swap is two renames, not a long delete.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {model} to {out_dir} in {time.perf_counter() - started:.1f} s")
    return out_dir


def _towers(source: Source) -> dict[str, dict]:
    # Text first: once it is traced its weights are freed, so the larger vision tower is traced with
    # less of the torch model left in memory.
    def text_example():
        if source.attention_mask_input:
            return tuple(source.tokenize_with_mask(["a photo of a cat", "a dog"]))
        return source.tokenize(["a photo of a cat", "a dog"])

    text_inputs = ["input_ids", source.attention_mask_input] if source.attention_mask_input else "input_ids"
    towers = {
        "text": dict(input=text_inputs, output="text_embeds", example=text_example,
                     axes={0: "batch", 1: "sequence"}, reference=verify.text_reference),
        "vision": dict(input="pixel_values", output="image_embeds",
                       example=lambda: torch.zeros(2, 3, source.image_size, source.image_size),
                       axes={0: "batch", 2: None, 3: None}, reference=verify.vision_reference),
    }
    return {name: t for name, t in towers.items() if name in source.towers}


def _write_folder(source: Source, folder: Path, precisions: list[str], external_data: bool | None,
                  log: Callable[[str], None]) -> None:
    towers = _towers(source)
    scratch = folder / ".scratch"  # inside the temp folder: removed with it on failure
    refs, fp32_data = {}, {}
    # Torch side, tower by tower: trace, save the fp32 file, compute the reference outputs, free
    # the tower's torch weights.
    for name, t in towers.items():
        (folder / name).mkdir()
        scratch.mkdir()
        log(f"{name}: tracing to ONNX")
        traced = scratch / "traced.onnx"
        onnx_io.export_tower(getattr(source, name), t["example"](), traced, t["input"], t["output"],
                             {k: v for k, v in t["axes"].items() if v})
        fp32_data[name] = onnx_io.copy(traced, folder / name / VARIANT_NAMES["fp32"],
                                       onnx_io.needs_external_data(traced, external_data))
        shutil.rmtree(scratch)
        refs[name] = t["reference"](source)
        source.release(name)
        gc.collect()
        log(f"{name}: traced{_peak_rss()}")

    # ONNX side: every variant is made from the saved fp32 file, written to scratch, copied into
    # place (one external-data file at most) and verified.
    specs = {}
    for name in sorted(towers, key=TOWERS.index):
        tower_dir = folder / name
        files, checks = {}, {}
        for precision in precisions:
            path = tower_dir / VARIANT_NAMES[precision]
            disabled: tuple[str, ...] = ()
            if precision == "fp32":
                data = fp32_data[name]
            else:
                scratch.mkdir()
                made = scratch / path.name
                if precision == "fp16":
                    variants.to_fp16(tower_dir / VARIANT_NAMES["fp32"], made)
                    disabled = variants.FP16_DISABLED_OPTIMIZERS
                else:
                    variants.to_int8(tower_dir / VARIANT_NAMES["fp32"], made)
                data = onnx_io.copy(made, path, onnx_io.needs_external_data(made, external_data))
                shutil.rmtree(scratch)
            figures = verify.measure(path, refs[name], disabled)
            checks[precision] = verify.check(name, precision, figures)
            files[precision] = onnx_io.file_record(folder, name, path.name, data, disabled)
            log(f"{name} {precision}: min cosine {figures['min_cosine']:.7f}, max abs diff "
                f"{figures['max_abs_diff']:.3g} ({figures['max_abs_diff_rel']:.2g} x norm), "
                f"{files[precision]['bytes'] + files[precision].get('external_data_bytes', 0):,} bytes"
                f"{_peak_rss()}")
        first_input = towers[name]["input"] if isinstance(towers[name]["input"], str) else towers[name]["input"][0]
        specs[name] = {"input_name": first_input, "output_name": towers[name]["output"],
                       "files": files, "verification": checks}

    _write_vision_config(source, folder / "vision")
    if "text" in specs:
        _write_text_files(source, folder / "text")
    manifest.dump(_manifest(source, specs), folder)
    if "text" in specs:
        figures = verify.tokenizer(folder, source)
        log(f"text tokenizer: token ids equal to the reference on {figures['texts']} texts")
    _check_files(folder, specs)
    _apply_umask(folder)


def _peak_rss() -> str:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return ""
    return f" (peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB)"


# What each tower folder may hold besides the ONNX files the manifest lists.
TOWER_EXTRAS = {"vision": {"preprocessor_config.json"},
                "text": {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                         "merges.txt", "config.json"}}


def _check_files(folder: Path, specs: dict) -> None:
    """The folder holds exactly what the manifest lists plus the tokenizer/config files: a stray
    file (a per-tensor leftover of the exporter, a scratch file) fails the export rather than ship."""
    listed = {manifest.MANIFEST_NAME}
    for name, spec in specs.items():
        listed |= {f"{name}/{extra}" for extra in TOWER_EXTRAS[name]}
        for record in spec["files"].values():
            listed |= {record["path"], *record["external_data"]}
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    stray = sorted(found - listed)
    if stray:
        raise ExportError(f"export left unlisted files in the model folder: {', '.join(stray[:5])}"
                          + (f" and {len(stray) - 5} more" if len(stray) > 5 else ""))


def _apply_umask(folder: Path) -> None:
    """Give the folder the permissions a plain mkdir / open would: mkdtemp makes it 0700 and some
    writers (the quantizer's temp files) 0600, which another user or a container could not read."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _manifest(source: Source, specs: dict) -> dict:
    return {
        "source": source.description,
        "architecture": source.architecture,
        "embed_dim": source.embed_dim,
        "logit_scale": source.logit_scale,
        "logit_bias": source.logit_bias,
        "scoring": source.scoring,
        "opset": onnx_io.OPSET,
        "vision": {
            **specs["vision"],
            "image_size": source.image_size,
            "resize_mode": source.resize_mode,
            "interpolation": source.interpolation,
            "fill": source.fill,
            "mean": list(source.mean),
            "std": list(source.std),
        },
        "text": specs.get("text") and {
            **specs["text"],
            "tokenizer": "text/tokenizer.json",
            "cleaning": source.cleaning,
            "context_length": source.context_length,
            "dynamic_length": source.dynamic_length,
            "bos_token_id": source.bos_token_id,
            "eos_token_id": source.eos_token_id,
            "pad_token_id": source.pad_token_id,
            "pooling": source.pooling,
            "attention_mask_input": source.attention_mask_input,
            "padding_side": source.padding_side,
            "strip_sep_token_id": source.strip_sep_token_id,
            **({"language": source.language, "languages": list(source.languages)} if source.languages else {}),
        },
    }


def _write_vision_config(source: Source, vision_dir: Path) -> None:
    """transformers' image-processor format, which fastembed reads too: CLIPImageProcessor's keys for a
    shortest-side resize + crop, a plain (height, width) resize without crop for "squash" (as
    SiglipImageProcessor writes it), and the longest edge + padding for "longest"."""
    size = source.image_size
    resize = {"shortest": {"shortest_edge": size}, "squash": {"height": size, "width": size},
              "longest": {"longest_edge": size}}[source.resize_mode]
    config = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": source.resize_mode == "shortest",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(source.mean),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(source.std),
        "resample": PIL_RESAMPLE[source.interpolation],
        "rescale_factor": 1 / 255,
        "size": resize,
    }
    if source.resize_mode == "longest":
        config.update(do_pad=True, pad_size={"height": size, "width": size}, fill=source.fill)
    (vision_dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_text_files(source: Source, text_dir: Path) -> None:
    source.write_tokenizer(text_dir)
    for required in ("tokenizer.json", "tokenizer_config.json"):
        if not (text_dir / required).is_file():
            raise ExportError(f"the tokenizer writer left no text/{required}")
    # fastembed's loader reads the pad id from config.json when tokenizer.json carries no padding,
    # and its truncation limit from tokenizer_config.json's model_max_length.
    config = {
        "model_type": "clip_text_model",
        "architectures": ["CLIPTextModelWithProjection"],
        "pad_token_id": source.pad_token_id,
        "bos_token_id": source.bos_token_id,
        "eos_token_id": source.eos_token_id,
        "max_position_embeddings": source.context_length,
        "projection_dim": source.embed_dim,
    }
    (text_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tok_cfg_path = text_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    if tok_cfg.get("model_max_length") != source.context_length:
        tok_cfg["model_max_length"] = source.context_length
        tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
