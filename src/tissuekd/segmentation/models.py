"""U-Nets for the segmentation study, built by segmentation_models_pytorch over timm encoders.

Students see one channel (nuclear); the `unet-multiplex` teacher is the same architecture
over every channel. Two output maps: foreground and boundary logits. Weights are never
downloaded: a backbone starts random unless a local checkpoint is loaded into it.
"""

from __future__ import annotations

import torch
from torch import nn

# the paper's four student encoders, as timm names behind smp's universal ("tu-") encoder
BACKBONES = {
    "swin-tiny": "tu-swin_tiny_patch4_window7_224",
    "resnet18": "tu-resnet18",
    "efficientnet-b0": "tu-efficientnet_b0",
    "mobilenetv3": "tu-mobilenetv3_large_100",
}
OUTPUTS = ("foreground", "boundary")
# smp's decoder widths, deepest stage first: the default, and what a checkpoint without its own was built with
DECODER = (256, 128, 64, 32, 16)


def build_unet(backbone: str, in_channels: int, tile: int, decoder: tuple[int, ...] = DECODER) -> nn.Module:
    """A U-Net with `backbone`'s encoder, `in_channels` inputs and the OUTPUTS logit maps.
    `tile` (px, a multiple of 32) fixes Swin's input size; the others take any multiple of 32.
    `decoder`: the five decoder stages' widths, deepest first (smp's default DECODER)."""
    import segmentation_models_pytorch as smp

    if backbone not in BACKBONES:
        raise ValueError(f"unknown segmentation backbone {backbone!r} (one of {', '.join(BACKBONES)})")
    if tile % 32:
        raise ValueError(f"tile {tile} px: U-Net inputs must be a multiple of 32 px")
    if len(decoder) != len(DECODER) or min(decoder) < 1:
        raise ValueError(f"decoder widths {list(decoder)}: five positive integers, deepest stage first")
    extra = {"img_size": tile} if backbone == "swin-tiny" else {}
    return smp.Unet(encoder_name=BACKBONES[backbone], encoder_weights=None, in_channels=in_channels,
                    classes=len(OUTPUTS), decoder_channels=tuple(decoder), **extra)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) foreground and boundary probabilities for images (B, C, H, W)."""
    return torch.sigmoid(model(images))
