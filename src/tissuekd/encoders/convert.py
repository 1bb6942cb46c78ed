"""Weights published in Hugging Face transformers' ViT layout (`ViTModel`, e.g. Phikon's
`pytorch_model.bin`) renamed to timm's VisionTransformer, so the model is built and frozen like
every other encoder. transformers itself is not needed: the mapping is by name, and the query,
key and value projections are stacked into timm's one `qkv` layer (q, k, v, in that order)."""

from __future__ import annotations

import re
from collections.abc import Mapping

PATCH = "embeddings.patch_embeddings.projection.weight"  # the key that tells the layout

RENAMED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
IN_BLOCK = {  # encoder.layer.{i}.<name> -> blocks.{i}.<name>
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
BLOCK_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")


def is_transformers_vit(state: Mapping) -> bool:
    return any(key.removeprefix("vit.") == PATCH for key in state)


def transformers_vit_to_timm(state: Mapping) -> dict:
    """timm names for a transformers ViTModel state dict (a `vit.` prefix, as a classification
    checkpoint has, is dropped; so is the pooler, which the class-token embedding does not use).
    A state dict already in timm's names is returned as it is."""
    if not is_transformers_vit(state):
        return dict(state)
    state = {key.removeprefix("vit."): value for key, value in state.items() if not key.startswith("classifier.")}
    out, qkv = {}, {}
    for key, value in state.items():
        if key.startswith("pooler."):
            continue
        if key in RENAMED:
            out[RENAMED[key]] = value
            continue
        match = BLOCK_KEY.fullmatch(key)
        if not match:
            out[key] = value  # left as it is: the strict load names it as unexpected
            continue
        block, name, kind = match.groups()
        if name.startswith("attention.attention."):  # query, key or value
            qkv.setdefault((block, kind), {})[name.rsplit(".", 1)[1]] = value
        elif name in IN_BLOCK:
            out[f"blocks.{block}.{IN_BLOCK[name]}.{kind}"] = value
        else:
            out[key] = value
    import torch

    for (block, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:  # else the strict load names the missing qkv
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out
