"""Weights published in Hugging Face transformers' ViT layouts (`ViTModel`, e.g. Phikon's
`pytorch_model.bin`; `Dinov2Model`, e.g. Phikon-v2's `model.safetensors`) renamed to timm's
VisionTransformer, so the model is built and frozen like every other encoder. transformers itself
is not needed: the mapping is by name, and the query, key and value projections are stacked into
timm's one `qkv` layer (q, k, v, in that order)."""

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
    "layernorm_before": "norm1",  # ViTModel
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "norm1": "norm1",  # Dinov2Model: timm's names, plus the layer scales
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
KIND = {"weight": "weight", "bias": "bias", "lambda1": "gamma"}
BLOCK_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)")
PREFIXES = ("vit.", "dinov2.")  # a classification checkpoint's backbone
DROPPED = ("classifier.", "pooler.", "embeddings.mask_token")  # unused by the class-token embedding


def _unprefixed(key: str) -> str:
    for prefix in PREFIXES:
        key = key.removeprefix(prefix)
    return key


def is_transformers_vit(state: Mapping) -> bool:
    return any(_unprefixed(key) == PATCH for key in state)


def transformers_layout(state: Mapping) -> str | None:
    """"ViTModel" or "Dinov2Model" for a file in one of transformers' layouts (DINOv2's has layer
    scales and a mask token), None for any other."""
    if not is_transformers_vit(state):
        return None
    dinov2 = any(".layer_scale1." in key or key.endswith("embeddings.mask_token") for key in state)
    return "Dinov2Model" if dinov2 else "ViTModel"


def transformers_vit_to_timm(state: Mapping) -> dict:
    """timm names for a transformers ViTModel or Dinov2Model state dict (a `vit.` or `dinov2.`
    prefix, as a classification checkpoint has, is dropped; so are the classifier, the pooler and
    DINOv2's mask token, which the class-token embedding does not use). A state dict already in
    timm's names is returned as it is."""
    if not is_transformers_vit(state):
        return dict(state)
    state = {_unprefixed(key): value for key, value in state.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        if key.startswith(DROPPED):
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
            out[f"blocks.{block}.{IN_BLOCK[name]}.{KIND[kind]}"] = value
        else:
            out[key] = value
    import torch

    for (block, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:  # else the strict load names the missing qkv
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out
