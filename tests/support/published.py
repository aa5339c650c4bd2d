"""Published ONNX layouts re-created from each publisher's recipe, with tiny random weights, under real repo ids.

* transformers.js (Xenova/clip-vit-base-patch32, onnx-community/siglip2-base-patch16-224-ONNX): scripts/convert.py
  --split_modalities exports each tower with optimum's ONNX configs, re-created here (optimum is not installed):
  `onnx/vision_model.onnx` (pixel_values -> image_embeds + last_hidden_state for CLIP, last_hidden_state +
  pooler_output for SigLIP), `onnx/text_model.onnx` (input_ids only), batch and sequence axes dynamic, the joint
  `onnx/model.onnx` of the whole model (its parameters, logit_scale and logit_bias among them, as initializers),
  quantize.py's `_quantized` (8-bit dynamic: QUInt8 weights where the graph has a Conv, QInt8 otherwise) and
  `_fp16` (io types kept float32) variants; config.json, preprocessor_config.json and the tokenizer files as
  transformers saves them.
* Immich (immich-app/ViT-B-32__openai, immich-app/ViT-B-16-SigLIP2__webli): immich_model_exporter's openclip.py:
  the open_clip model's encode_image / encode_text with normalize=True, traced at opset 19 with no dynamic axes
  from a (1, 3, S, S) float image and a (1, context) int32 text, inputs "image" / "text", output "embedding";
  `config.json` = open_clip.get_model_config(ARCH), `visual/preprocess_cfg.json` =
  open_clip.get_model_preprocess_cfg(model), `textual/` = the config's tokenizer saved by transformers.

Real kinds where it matters: the CLIP BPE tokenizer files of tests/fixtures/clip-tokenizer, a Gemma-style BPE
(support.hubcache.gemma_bpe) for SigLIP 2, 224 px images with each publisher's preprocessing; tiny widths.
"""

from __future__ import annotations

import json
import math
import tempfile
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from support import hubcache

CLIP_TOKENIZER = Path(__file__).parent.parent / "fixtures" / "clip-tokenizer"
XENOVA_CLIP = "Xenova/clip-vit-base-patch32"
ONNX_SIGLIP2 = "onnx-community/siglip2-base-patch16-224-ONNX"
IMMICH_CLIP = "immich-app/ViT-B-32__openai"
IMMICH_SIGLIP2 = "immich-app/ViT-B-16-SigLIP2__webli"
SIGLIP2_TOKENIZER = "timm/ViT-B-16-SigLIP2"  # open_clip's hf_tokenizer_name for ViT-B-16-SigLIP2
SEED = 0


@dataclass
class Published:
    home: Path  # HF_HOME holding every repo, offline
    folders: dict  # repo id -> snapshot folder
    models: dict  # repo id -> the torch model (reference)
    extra: dict  # repo id -> what the reference needs besides the model (tokenizer, transform, arch)


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict | None,
            opset: int) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # both publishers switch it off (no ONNX form of the fused op)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                              opset_version=opset, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _variants(onnx_dir: Path, stem: str) -> None:
    """transformers.js quantize.py's q8 (`_quantized`) and fp16 files for onnx/STEM.onnx."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx_dir / f"{stem}.onnx"
    ops = {n.op_type for n in onnx.load(str(source)).graph.node}
    # quantize.py: QUInt8 weights when the graph has a Conv (onnxruntime-web has no int8 ConvInteger), else QInt8.
    weight = QuantType.QUInt8 if "Conv" in ops else QuantType.QInt8
    quantize_dynamic(str(source), str(onnx_dir / f"{stem}_quantized.onnx"), per_channel=True, reduce_range=True,
                     weight_type=weight, extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(onnx_dir / f"{stem}_fp16.onnx"))


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------- transformers.js

def xenova_clip(out: Path):
    """Xenova/clip-vit-base-patch32: a tiny CLIPModel with openai/clip-vit-base-patch32's text config ids (bos 0,
    eos 2, pad 1: transformers' legacy argmax pooling), the real CLIP tokenizer and CLIPImageProcessor."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=32)
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    for name in ("model.safetensors",):  # the repo ships ONNX only
        (out / name).unlink(missing_ok=True)
    AutoTokenizer.from_pretrained(CLIP_TOKENIZER).save_pretrained(out)
    CLIPImageProcessor.from_pretrained(CLIP_TOKENIZER).save_pretrained(out)
    onnx_dir = out / "onnx"

    class Vision(torch.nn.Module):  # CLIPVisionModelWithProjection
        def __init__(self):
            super().__init__()
            self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

        def forward(self, pixel_values):
            o = self.vision_model(pixel_values=pixel_values)
            return self.visual_projection(o.pooler_output), o.last_hidden_state

    class Text(torch.nn.Module):  # CLIPTextModelWithProjection
        def __init__(self):
            super().__init__()
            self.text_model, self.text_projection = model.text_model, model.text_projection

        def forward(self, input_ids):
            o = self.text_model(input_ids=input_ids)
            return self.text_projection(o.pooler_output), o.last_hidden_state

    pixels, ids = torch.randn(2, 3, 224, 224), torch.randint(3, 49405, (2, 16))
    # optimum's CLIPVisionWithProjection / CLIPTextWithProjection configs (transformers.js scripts/extra/clip.py).
    _export(Vision(), (pixels,), onnx_dir / "vision_model.onnx", ["pixel_values"], ["image_embeds", "last_hidden_state"],
            {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"},
             "image_embeds": {0: "batch_size"}, "last_hidden_state": {0: "batch_size", 1: "sequence_length"}}, 14)
    _export(Text(), (ids,), onnx_dir / "text_model.onnx", ["input_ids"], ["text_embeds", "last_hidden_state"],
            {"input_ids": {0: "batch_size", 1: "sequence_length"}, "text_embeds": {0: "batch_size"},
             "last_hidden_state": {0: "batch_size", 1: "sequence_length"}}, 14)
    _joint(model, (ids, pixels, torch.ones_like(ids)), onnx_dir, ["input_ids", "pixel_values", "attention_mask"])
    for stem in ("vision_model", "text_model"):
        _variants(onnx_dir, stem)
    (onnx_dir / "vision_model_bnb4.onnx").write_bytes(b"")  # listed by the reader as a variant it does not run
    return model


def _joint(model, args: tuple, onnx_dir: Path, inputs: list[str]) -> None:
    """optimum's CLIPOnnxConfig / SiglipOnnxConfig (feature-extraction): the whole model as onnx/model.onnx, its
    parameters under their own names (logit_scale, logit_bias) as initializers."""
    names = ["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"]
    original = type(model).forward

    def forward(self, *a):
        o = original(self, **dict(zip(inputs, a)))
        return tuple(getattr(o, n) for n in names)

    model.forward = types.MethodType(forward, model)
    try:
        dynamic = {"input_ids": {0: "text_batch_size", 1: "sequence_length"},
                   "pixel_values": {0: "image_batch_size", 1: "num_channels", 2: "height", 3: "width"},
                   "attention_mask": {0: "text_batch_size", 1: "sequence_length"}}
        _export(model, args, onnx_dir / "model.onnx", inputs, names, {k: v for k, v in dynamic.items() if k in inputs},
                14)
    finally:
        del model.forward


def vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)


def gemma_tokenizer_files(model_max_length: int | None = None) -> dict[str, Path]:
    """SigLIP 2's kind of tokenizer (Gemma BPE with byte fallback, "$A <eos>", <pad> = 0, right padding)."""
    tok = hubcache.gemma_bpe(add_bos=False, add_eos=True)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return hubcache.save_tokenizer(tok, "GemmaTokenizer", padding_side="right", **extra)


# SiglipModel widths: tiny for tests; google/siglip2-base-patch16-224's own for benchmarks (its 256 K-token
# embedding table included, so the text graph has the published file's size; the test tokenizer uses its first ids).
SIGLIP_SIZES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, text_layers=2, vision_layers=1, heads=2, vocab=None),
    "base": dict(hidden_size=768, intermediate_size=3072, text_layers=12, vision_layers=12, heads=12, vocab=256000),
}


def onnx_siglip2(out: Path, size: str = "tiny", joint: bool = True):
    """onnx-community/siglip2-base-patch16-224-ONNX: a SiglipModel (fixed-resolution SigLIP 2) of SIGLIP_SIZES[size],
    its Gemma tokenizer (64 tokens) and SiglipImageProcessor (224 x 224, bilinear, 0.5 mean/std)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    files = gemma_tokenizer_files(model_max_length=64)
    widths = SIGLIP_SIZES[size]
    common = dict(hidden_size=widths["hidden_size"], intermediate_size=widths["intermediate_size"],
                  num_attention_heads=widths["heads"])
    config = SiglipConfig(
        text_config=dict(vocab_size=widths["vocab"] or vocab_size(files["tokenizer.json"]),
                         num_hidden_layers=widths["text_layers"], max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=2, **common),
        vision_config=dict(num_hidden_layers=widths["vision_layers"], image_size=224, patch_size=16, **common))
    torch.manual_seed(SEED)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        # Trained-looking values: random init sets both to 0, and the exporter then merges the two equal
        # initializers into one nameless constant, which no published (trained) graph has.
        model.logit_scale.fill_(math.log(112.0))
        model.logit_bias.fill_(-16.5)
    model.save_pretrained(out)
    (out / "model.safetensors").unlink(missing_ok=True)
    for name, path in files.items():
        (out / name).write_bytes(path.read_bytes())
    SiglipImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(out)
    onnx_dir = out / "onnx"

    class Vision(torch.nn.Module):  # SiglipVisionModel
        def __init__(self):
            super().__init__()
            self.vision_model = model.vision_model

        def forward(self, pixel_values):
            o = self.vision_model(pixel_values=pixel_values)
            return o.last_hidden_state, o.pooler_output

    class Text(torch.nn.Module):  # SiglipTextModel: input_ids only
        def __init__(self):
            super().__init__()
            self.text_model = model.text_model

        def forward(self, input_ids):
            o = self.text_model(input_ids=input_ids)
            return o.last_hidden_state, o.pooler_output

    pixels, ids = torch.randn(2, 3, 224, 224), torch.randint(5, 300, (2, 64))
    _export(Vision(), (pixels,), onnx_dir / "vision_model.onnx", ["pixel_values"], ["last_hidden_state", "pooler_output"],
            {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"},
             "last_hidden_state": {0: "batch_size"}, "pooler_output": {0: "batch_size"}}, 14)
    _export(Text(), (ids,), onnx_dir / "text_model.onnx", ["input_ids"], ["last_hidden_state", "pooler_output"],
            {"input_ids": {0: "batch_size", 1: "sequence_length"},
             "last_hidden_state": {0: "batch_size", 1: "sequence_length"}, "pooler_output": {0: "batch_size"}}, 14)
    if joint:
        _joint(model, (ids, pixels), onnx_dir, ["input_ids", "pixel_values"])  # SiglipOnnxConfig: no attention_mask
    return model


# ------------------------------------------------------------------------------------------------ Immich

def _tiny_open_clip(root: Path, name: str, arch: str, vocab: int | None, text_overrides: dict) -> Path:
    """open_clip's config for `arch`, shrunk (224 px ViT of width 32), registered as `name`."""
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    cfg = json.loads(json.dumps(open_clip.get_model_config(arch)))
    cfg["embed_dim"] = 16
    patch = 32 if "B-32" in arch else 16
    cfg["vision_cfg"] = {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": patch}
    cfg["text_cfg"].update({"width": 32, "heads": 2, "layers": 2, **({"vocab_size": vocab} if vocab else {}),
                            **text_overrides})
    cfg.pop("quick_gelu", None)
    path = root / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return path


def immich(out: Path, name: str, arch: str, tag: str, vocab: int | None = None):
    """immich_model_exporter's openclip.to_onnx for ARCH__TAG, on a tiny config registered as `name`: returns
    (model, preprocess, tokenizer) of open_clip, the reference."""
    import torch
    from fastclip_export.torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    from open_clip.pretrained import get_pretrained_cfg

    tag_cfg = get_pretrained_cfg(arch, tag)
    # What create_model takes from the tag: its preprocessing (the weights are random here).
    force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    torch.manual_seed(SEED)
    model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=force).eval()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    config = open_clip.get_model_config(name)
    (out / "visual").mkdir(parents=True, exist_ok=True)
    (out / "visual" / "preprocess_cfg.json").write_text(json.dumps(open_clip.get_model_preprocess_cfg(model)))
    (out / "config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer

    source = config["text_cfg"].get("hf_tokenizer_name") or CLIP_TOKENIZER  # "openai/clip-vit-base-patch32"
    AutoTokenizer.from_pretrained(source).save_pretrained(out / "textual")
    size, context = config["vision_cfg"]["image_size"], config["text_cfg"].get("context_length", 77)

    class Encode(torch.nn.Module):  # Immich assigns model.forward = encode_*; a holder keeps the model intact
        def __init__(self, fn):
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, x):
            return getattr(self.model, self.fn)(x, normalize=True)

    _export(Encode("encode_image"), (torch.randn(1, 3, size, size),), out / "visual" / "model.onnx", ["image"],
            ["embedding"], None, 19)
    _export(Encode("encode_text"), (torch.ones(1, context, dtype=torch.int32),), out / "textual" / "model.onnx",
            ["text"], ["embedding"], None, 19)
    return model, preprocess, open_clip.get_tokenizer(name)


def immich_mclip(out: Path, visual_from: Path):
    """immich_model_exporter's mclip.py: M-CLIP's text encoder (a transformers XLM-R, masked mean pooling, a linear
    map, L2-normalized) traced with int32 `input_ids` and `attention_mask` of (1, 77); the image side is an open_clip
    export (copied from `visual_from`, with its config.json, as Immich writes it). Returns the torch text encoder
    (ids, mask) -> normalized vectors, the reference."""
    import shutil

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tok = hubcache.unigram(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", mask="<mask>")
    files = hubcache.save_tokenizer(tok, "XLMRobertaTokenizer", **hubcache.SPECIALS_XLMR)
    shutil.copytree(visual_from / "visual", out / "visual")
    shutil.copyfile(visual_from / "config.json", out / "config.json")
    (out / "textual").mkdir(parents=True)
    for name, path in files.items():
        (out / "textual" / name).write_bytes(path.read_bytes())
    embed_dim = json.loads((out / "config.json").read_text())["embed_dim"]
    torch.manual_seed(SEED)
    config = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2)

    class MClipText(torch.nn.Module):  # multilingual_clip's MultilingualCLIP.forward as Immich patches it
        def __init__(self):
            super().__init__()
            self.transformer = XLMRobertaModel(config, add_pooling_layer=False)
            self.LinearTransformation = torch.nn.Linear(32, embed_dim)

        def forward(self, input_ids, attention_mask):
            embs = self.transformer(input_ids, attention_mask)[0]
            embs = (embs * attention_mask.unsqueeze(2)).sum(dim=1) / attention_mask.sum(dim=1)[:, None]
            return torch.nn.functional.normalize(self.LinearTransformation(embs), dim=-1)

    model = MClipText().eval()
    ones = torch.ones(1, 77, dtype=torch.int32)
    _export(model, (ones, ones), out / "textual" / "model.onnx", ["input_ids", "attention_mask"], ["embedding"], None,
            19)
    return model


# ------------------------------------------------------------------------------------------------ all four

def build(root: Path) -> Published:
    """Every layout above, seeded under its real repo id into root/hf-home (offline), plus SigLIP 2's tokenizer
    repo that open_clip's reference tokenizer fetches."""
    home = root / "hf-home"
    hub = home / "hub"
    folders, models, extra = {}, {}, {}
    seeded_tok = gemma_tokenizer_files()
    siglip_vocab = vocab_size(seeded_tok["tokenizer.json"])
    hubcache.seed_repo(hub, SIGLIP2_TOKENIZER, {**seeded_tok, "config.json": json.dumps(
        {"architecture": "vit_base_patch16_siglip_224", "num_classes": 0})})
    with hubcache.offline(home):
        for repo, build_one in ((XENOVA_CLIP, xenova_clip), (ONNX_SIGLIP2, onnx_siglip2)):
            scratch = Path(tempfile.mkdtemp(prefix="fastclip-published-", dir=root))
            models[repo] = build_one(scratch)
            folders[repo] = hubcache.seed_repo(hub, repo, _files(scratch))
        configs = root / "open_clip-configs"
        configs.mkdir(exist_ok=True)
        for repo, name, arch, tag, vocab, text in (
                (IMMICH_CLIP, "tiny-ViT-B-32", "ViT-B-32", "openai", None, {}),
                (IMMICH_SIGLIP2, "tiny-ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2", "webli", siglip_vocab, {})):
            _tiny_open_clip(configs, name, arch, vocab, text)
            scratch = Path(tempfile.mkdtemp(prefix="fastclip-published-", dir=root))
            model, preprocess, tokenizer = immich(scratch, name, arch, tag, vocab)
            models[repo] = model
            extra[repo] = {"preprocess": preprocess, "tokenizer": tokenizer, "arch": name}
            folders[repo] = hubcache.seed_repo(hub, repo, _files(scratch))
    return Published(home=home, folders=folders, models=models, extra=extra)


def logit_scale(model) -> float:
    return math.exp(float(model.logit_scale.detach().reshape(-1)[0]))
