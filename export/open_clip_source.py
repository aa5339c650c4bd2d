"""Load an open_clip model as a `Source`: `open_clip:ARCH` with a tag, a checkpoint file or `none`.

ARCH is a registered open_clip architecture (`open_clip.list_models()`, including configs added with
`open_clip.add_model_config`) or a path to a model-config JSON file, which is registered under its
file stem - the way to export a custom architecture from the command line.
"""

from __future__ import annotations

import difflib
import json
import urllib.error
from pathlib import Path

import torch
from torch import nn

from fastclip.errors import ExportError

from .source import Source
from .torchvision_compat import import_open_clip


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention's math, written so that tracing keeps the sequence length symbolic.

    Traced as is, nn.MultiheadAttention reshapes with the example's sequence length as a constant,
    and the graph then rejects any other length. Only the head count and width are fixed here.
    """
    q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v))  # B,H,L,Dh
    scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2) + mask
    out = scores.softmax(dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # open_clip's ResidualAttentionBlock.forward with the attention above.
    x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _check_blocks(arch: str, transformer: nn.Module) -> None:
    from open_clip.transformer import ResidualAttentionBlock

    for block in transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (type(block) is not ResidualAttentionBlock or not isinstance(attn, nn.MultiheadAttention)
                or not attn.batch_first or not attn._qkv_same_embed_dim or hasattr(block, "ln_1_kv")):
            raise ExportError(f"open_clip:{arch}: text block type {type(block).__name__} is not supported")
    if not getattr(transformer, "batch_first", True):
        raise ExportError(f"open_clip:{arch}: sequence-first text transformers are not supported")


class OpenClipTextTower(nn.Module):
    """open_clip's text encoder for any sequence length L <= context_length.

    `encode_text` adds the whole positional table and the whole causal mask, so it only accepts
    exactly context_length tokens. Slicing both to L gives the same result on the real tokens (the
    mask is causal, so the padding after them never reaches the pooled position) and lets the graph
    take short, batch-longest padded input.
    """

    def __init__(self, token_embedding, positional_embedding, transformer, ln_final, text_projection,
                 attn_mask, pool_type: str, eos_id: int | None):
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.pool_type = pool_type
        self.eos_id = eos_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        length = input_ids.shape[1]
        x = self.token_embedding(input_ids)
        x = x + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length]
        for block in self.transformer.resblocks:
            x = _block(block, x, mask)
        x = self.ln_final(x)
        x = text_global_pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return x


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f"; close matches: {', '.join(close)}" if close else ""


def resolve_arch(arch: str) -> str:
    open_clip = import_open_clip()
    path = Path(arch)
    if arch.endswith(".json"):
        if not path.is_file():
            raise ExportError(f"open_clip model config {arch} not found")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"open_clip model config {arch} is unreadable: {exc}") from None
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ExportError(f"{arch} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    models = open_clip.list_models()
    if arch not in models:
        raise ExportError(f"unknown open_clip architecture {arch!r}{_close(arch, models)}")
    return arch


def _resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    open_clip = import_open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        hint = f" (one of: {', '.join(tags)})" if tags else ""
        raise ExportError(f"open_clip:{arch} needs --pretrained TAG{hint}, a checkpoint file, or 'none' for random weights")
    if pretrained.lower() == "none":
        return None
    if pretrained in tags or Path(pretrained).is_file():
        return pretrained
    if not tags:
        raise ExportError(f"open_clip:{arch} has no pretrained tags and {pretrained!r} is not a file; use a checkpoint file or 'none'")
    raise ExportError(f"unknown pretrained tag {pretrained!r} for open_clip:{arch}{_close(pretrained, tags)}"
                      f" (available: {', '.join(tags)})")


def _check_preprocessing(arch: str, cfg: dict) -> tuple[int, tuple, tuple]:
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ExportError(f"open_clip:{arch} uses a non-square input {tuple(size)}; not supported")
        size = size[0]
    resize_mode = cfg.get("resize_mode", "shortest")
    interpolation = cfg.get("interpolation", "bicubic")
    if resize_mode != "shortest" or interpolation != "bicubic":
        raise ExportError(
            f"open_clip:{arch} preprocesses with resize_mode={resize_mode!r}, interpolation={interpolation!r}; "
            "fastclip only reproduces shortest-side bicubic resize + center crop"
        )
    return int(size), tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def _text_tower(arch: str, model: nn.Module) -> tuple[OpenClipTextTower, int, int]:
    # CLIP keeps the text modules on the model itself; CustomTextCLIP has them under .text.
    holder = getattr(model, "text", None)
    if holder is not None:
        if not hasattr(holder, "token_embedding"):
            raise ExportError(f"open_clip:{arch} has a {type(holder).__name__} text tower; only open_clip's own text transformer is supported")
        if getattr(holder, "cls_emb", None) is not None or getattr(holder, "use_pad_mask", False):
            raise ExportError(f"open_clip:{arch}: text towers with a class token or padding mask are not supported")
        parts = holder
        pool_type, eos_id = holder.pool_type, holder.eos_id
    else:
        parts = model
        pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
    if parts.attn_mask is None:
        # Without a causal mask the padding changes every token, so batch-longest padding would
        # silently change the vectors.
        raise ExportError(f"open_clip:{arch}: bidirectional text towers are not supported")
    if pool_type not in ("argmax", "eos"):
        raise ExportError(f"open_clip:{arch}: text pooling {pool_type!r} is not supported (only argmax, eos)")
    _check_blocks(arch, parts.transformer)
    tower = OpenClipTextTower(parts.token_embedding, parts.positional_embedding, parts.transformer,
                              parts.ln_final, parts.text_projection, parts.attn_mask, pool_type, eos_id)
    return tower, parts.transformer.width, parts.transformer.resblocks[0].attn.num_heads


def load_open_clip(arch: str, pretrained: str | None) -> Source:
    open_clip = import_open_clip()
    arch = resolve_arch(arch)
    weights = _resolve_pretrained(arch, pretrained)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    except (OSError, urllib.error.URLError) as exc:
        raise ExportError(
            f"could not get open_clip:{arch} weights {weights!r} (no network and not cached?): {type(exc).__name__}"
        ) from None
    except Exception as exc:
        if _is_hub_error(exc):
            raise ExportError(f"could not download open_clip:{arch} weights {weights!r}: no network and not cached") from None
        raise ExportError(f"could not load open_clip:{arch} with {weights!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    model.eval()

    image_size, mean, std = _check_preprocessing(arch, open_clip.get_model_preprocess_cfg(model))
    tokenizer = open_clip.get_tokenizer(arch)
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.vocab_size != 49408 \
            or tokenizer.clean_fn.__name__ != "_clean_lower" or tokenizer.reduction_fn is not None:
        raise ExportError(f"open_clip:{arch} uses a {type(tokenizer).__name__} tokenizer variant; only open_clip's CLIP BPE tokenizer is supported")
    context_length = int(tokenizer.context_length)

    text, text_width, text_heads = _text_tower(arch, model)
    visual = model.visual
    vision_width = getattr(getattr(visual, "transformer", None), "width", 0)
    logit_bias = getattr(model, "logit_bias", None)

    def write_tokenizer(out_dir: Path) -> None:
        from .tokenizer_files import write_open_clip_tokenizer

        write_open_clip_tokenizer(out_dir, context_length)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts).long()

    with torch.no_grad():
        embed_dim = int(text(tokenizer(["a"])).shape[-1])
    return Source(
        kind="open_clip",
        description={"kind": "open_clip", "model": arch,
                     "pretrained": "none" if weights is None else (Path(weights).name if Path(weights).is_file() else weights)},
        architecture=arch,
        embed_dim=embed_dim,
        logit_scale=float(model.logit_scale.detach().exp().reshape(-1)[0]),
        logit_bias=None if logit_bias is None else float(logit_bias.detach().reshape(-1)[0]),
        vision=visual,
        text=text,
        image_size=image_size,
        mean=mean,
        std=std,
        preprocess=preprocess,
        context_length=context_length,
        bos_token_id=int(tokenizer.sot_token_id),
        eos_token_id=int(tokenizer.eot_token_id),
        pad_token_id=0,  # open_clip pads with zeros; argmax pooling finds the end token anyway
        pooling=text.pool_type,
        cleaning="open_clip",
        tokenize=tokenize,
        write_tokenizer=write_tokenizer,
        vision_heads=getattr(visual, "heads", 0) or 0,
        vision_width=vision_width,
        text_heads=text_heads,
        text_width=text_width,
        reference_text=model.encode_text,
    )


def _is_hub_error(exc: Exception) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return False
    return isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError))
