"""transformers' CLIP towers re-written for export, with the same math (see open_clip_towers.py).

Only one row per input leaves a tower (the class token of an image, the end token of a text), so
the last encoder layer computes its keys and values for every token but its query, attention
output and MLP for that row alone: about 7 % fewer FLOPs on ViT-B/32.

Every layer goes through `_layer` rather than its own forward: CLIPEncoderLayer's signature and
return type changed across transformers releases (4.x takes a separate causal mask and returns a
tuple), and the text tower's causal mask and positions are sliced here to the input's length L,
so the traced graph takes any L up to max_position_embeddings rather than the example's.

Anything these wrappers do not recognise keeps the library's own full forward (`FullVisionTower`,
`FullTextTower`). Verification measures every exported graph against transformers itself.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Rows = Callable[[torch.Tensor], torch.Tensor]  # (B, L, W) -> (B, 1, W): the pooled row of each input


def features(out) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding;
    # older releases return the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class FullVisionTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return features(self.clip.get_image_features(pixel_values=pixel_values))


class FullTextTower(nn.Module):
    """No attention mask: the causal mask already keeps the padding after the end token from
    reaching the pooled position, so the graph needs input_ids only."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return features(self.clip.get_text_features(input_ids=input_ids))


def _attention(attn: nn.Module, h: torch.Tensor, mask: torch.Tensor | None,
               queries: torch.Tensor | None = None) -> torch.Tensor:
    """CLIPAttention's eager math over keys/values from `h`, for `queries` (default: every row of h)."""
    q = attn.q_proj(h if queries is None else queries)
    q, k, v = (t.reshape(*t.shape[:-1], attn.num_heads, attn.head_dim).transpose(1, 2)  # B,H,rows,Dh
               for t in (q, attn.k_proj(h), attn.v_proj(h)))
    scores = (q @ k.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    return attn.out_proj((scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2))


def _layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # CLIPEncoderLayer.forward with the attention above.
    x = x + _attention(layer.self_attn, layer.layer_norm1(x), mask)
    return x + layer.mlp(layer.layer_norm2(x))


def _last_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, rows: Rows) -> torch.Tensor:
    """The layer's output at the pooled rows only, (B, 1, W); `mask` is the mask of those rows."""
    h = layer.layer_norm1(x)
    x = rows(x) + _attention(layer.self_attn, h, mask, rows(h))
    return x + layer.mlp(layer.layer_norm2(x))


def check_layers(config, encoder: nn.Module) -> str | None:
    """Why these wrappers cannot stand in for `encoder`'s layers, or None when they can."""
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    # Every implementation transformers ships computes eager attention's result; a custom one may not.
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in (None, "eager", "sdpa"):
        return f"attention implementation {implementation!r} is not supported"
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return "no encoder layers"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if type(layer) is not CLIPEncoderLayer or not isinstance(attn, CLIPAttention) or mlp is None:
            return f"layer type {type(layer).__name__} is not supported"
        if attn.num_heads * attn.head_dim != attn.q_proj.out_features:
            return "attention width is not heads x head width"
    return None


class HFVisionTower(nn.Module):
    """CLIPModel.get_image_features: class-token pooling, post_layernorm, visual_projection."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.vision = clip.vision_model
        self.projection = clip.visual_projection

    @staticmethod
    def supports(clip: nn.Module) -> bool:
        vision = getattr(clip, "vision_model", None)
        return (isinstance(getattr(clip, "visual_projection", None), nn.Linear)
                and all(hasattr(vision, name) for name in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"))
                and check_layers(clip.config.vision_config, vision.encoder) is None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.vision
        x = vision.pre_layrnorm(vision.embeddings(pixel_values))
        *layers, last = vision.encoder.layers
        for layer in layers:
            x = _layer(layer, x, None)
        x = _last_layer(last, x, None, lambda t: t[:, :1])[:, 0]
        return self.projection(vision.post_layernorm(x))  # per-token LayerNorm: the same on one row


class HFTextTower(nn.Module):
    """CLIPModel.get_text_features for any sequence length L <= max_position_embeddings.

    Input_ids only, no attention mask: the causal mask keeps any padding after the end token from
    reaching the pooled row.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.text = clip.text_model
        self.projection = clip.text_projection
        self.eos_token_id = int(clip.config.text_config.eos_token_id)
        length = self.text.embeddings.position_embedding.num_embeddings
        self.register_buffer("causal_mask", torch.full((length, length), float("-inf")).triu(1), persistent=False)

    @staticmethod
    def supports(clip: nn.Module) -> bool:
        text = getattr(clip, "text_model", None)
        embeddings = getattr(text, "embeddings", None)
        return (isinstance(getattr(clip, "text_projection", None), nn.Linear)
                and isinstance(getattr(embeddings, "token_embedding", None), nn.Embedding)
                and isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding)
                and all(hasattr(text, name) for name in ("encoder", "final_layer_norm"))
                and clip.config.text_config.eos_token_id is not None
                and check_layers(clip.config.text_config, text.encoder) is None)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        text, length = self.text, input_ids.shape[1]
        # Slicing the position table (rather than CLIPTextEmbeddings' position_ids) keeps L symbolic.
        x = text.embeddings.token_embedding(input_ids) + text.embeddings.position_embedding.weight[:length]
        mask = self.causal_mask[:length, :length]
        *layers, last = text.encoder.layers
        for layer in layers:
            x = _layer(layer, x, mask)

        # transformers' rule: legacy configs (eos_token_id 2) pool at the highest id, others at the
        # first end token.
        if self.eos_token_id == 2:
            pooled = input_ids.argmax(dim=-1)
        else:
            pooled = (input_ids == self.eos_token_id).int().argmax(dim=-1)
        batch = torch.arange(input_ids.shape[0])

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[batch, pooled].unsqueeze(1)

        x = _last_layer(last, x, mask[pooled][:, None, None], rows)[:, 0]
        return self.projection(text.final_layer_norm(x))  # per-token LayerNorm: the same on one row


def towers(clip: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(vision, text) export wrappers of a CLIPModel: the pooled-row ones where supported."""
    vision = HFVisionTower(clip) if HFVisionTower.supports(clip) else FullVisionTower(clip)
    text = HFTextTower(clip) if HFTextTower.supports(clip) else FullTextTower(clip)
    return vision, text
