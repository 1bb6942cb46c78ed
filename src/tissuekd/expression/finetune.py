"""CMRCNet with the encoder's last blocks fine-tuned (expression.cmrcnet.finetune_blocks > 0).

The frozen path trains on stored features. Fine-tuning needs the pixels: each spot's patch is
read from its sample's patch file (the HEST layout: `img`, `barcode`, `coords`; written by the
rule expression_patches at the encoder's input size) and passed through the encoder, whose last
blocks (and the layers after them) train at their own, smaller learning rate. The rest of the
encoder stays frozen, and the whole encoder stays in eval mode (batch-norm statistics and
dropout as pretrained: spot batches are too small and too alike to re-estimate them).

The encoder's output is standardised by the frozen features' training mean and SD, so at the
first step the image side sees exactly what the frozen path sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from tissuekd.errors import InputError
from tissuekd.expression.models import DIM
from tissuekd.io.atomic import atomic_path

BLOCK_CONTAINERS = ("blocks", "stages", "layers")  # timm's names: ViT/MobileNet/EfficientNet, ConvNeXt, Swin
SETTING = "config expression.cmrcnet.finetune_blocks"


def encoder_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(blocks in order, the top-level modules after them) of a timm encoder: the entries of its
    `blocks`, `stages` or `layers` container, or ResNet's `layer1`..`layerN`."""
    children = list(model.named_children())
    for attr in BLOCK_CONTAINERS:
        container = getattr(model, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
            after = [m for _, m in children[[n for n, _ in children].index(attr) + 1:]]
            return list(container), after
    numbered = [i for i, (name, _) in enumerate(children) if re.fullmatch(r"layer\d+", name)]
    if numbered:
        return [children[i][1] for i in numbered], [m for _, m in children[numbered[-1] + 1:]]
    raise InputError(SETTING, f"{type(model).__name__} has no blocks, stages, layers or layerN to fine-tune")


def unfreeze_tail(model: nn.Module, blocks: int) -> list[nn.Parameter]:
    """Make the last `blocks` blocks, and every module after them (final norms, heads), trainable;
    every other parameter frozen. Returns the trainable parameters."""
    sequence, after = encoder_blocks(model)
    if not 1 <= blocks <= len(sequence):
        raise InputError(SETTING, f"{blocks} blocks asked, {type(model).__name__} has {len(sequence)}")
    for p in model.parameters():
        p.requires_grad_(False)
    tail = [p for module in [*sequence[-blocks:], *after] for p in module.parameters()]
    for p in tail:
        p.requires_grad_(True)
    return tail


class TunedEncoder(nn.Module):
    """uint8 crops (B, 3, px, px) -> standardised features (B, d), as the frozen path's: the
    encoder's pixel normalisation, the encoder, then the training spots' feature mean and SD."""

    def __init__(self, model: nn.Module, spec, blocks: int, feature_mean: np.ndarray, feature_sd: np.ndarray):
        super().__init__()
        self.model = model
        self.tail = unfreeze_tail(model, blocks)
        shape = (1, 3, 1, 1)
        self.register_buffer("pixel_mean", torch.tensor(spec.mean, dtype=torch.float32).view(shape) * 255)
        self.register_buffer("pixel_sd", torch.tensor(spec.std, dtype=torch.float32).view(shape) * 255)
        self.register_buffer("feature_mean", torch.as_tensor(feature_mean, dtype=torch.float32))
        self.register_buffer("feature_sd", torch.as_tensor(feature_sd, dtype=torch.float32))

    def train(self, mode: bool = True) -> TunedEncoder:
        super().train(mode)
        self.model.eval()  # see the module docstring
        return self

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops.float() - self.pixel_mean) / self.pixel_sd
        return (self.model(x).float() - self.feature_mean) / self.feature_sd

    def tail_state(self) -> dict[str, torch.Tensor]:
        """The fine-tuned tensors (what differs from the pretrained encoder), on the CPU."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach().cpu() for p in self.tail}


def write_patches(out: str | Path, batches, coords: np.ndarray, barcodes: np.ndarray, px: int) -> None:
    """A patch file in the HEST layout: `img` (n, px, px, 3) uint8, `barcode`, `coords` (level-0
    px); `batches` yield (rows, uint8 (B, 3, px, px)) as the crop readers do."""
    n = len(barcodes)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        img = h5.create_dataset("img", (n, px, px, 3), dtype="u1", chunks=(1, px, px, 3) if n else None)
        h5.create_dataset("barcode", data=np.asarray(barcodes).astype(object), dtype=h5py.string_dtype())
        h5.create_dataset("coords", data=np.asarray(coords))
        written = np.zeros(n, bool)
        for rows, crops in batches:
            img[rows] = crops.permute(0, 2, 3, 1).numpy()  # rows increase within a batch
            written[rows] = True
        if not written.all():
            raise RuntimeError(f"{(~written).sum()} of {n} spots got no patch")


class PatchBank:
    """Several samples' patch files as one row space (samples in order): `bank(rows)` reads
    those rows' patches, uint8 (B, 3, px, px), without loading a file whole."""

    def __init__(self, paths: Sequence[str | Path], barcodes: Sequence[np.ndarray]):
        self.files = [h5py.File(p, "r") for p in paths]
        for h5, path, expected in zip(self.files, paths, barcodes):
            stored = h5["barcode"][:].astype(str)
            if not np.array_equal(stored, np.asarray(expected).astype(str)):
                raise InputError(path, f"its {len(stored)} patches are not the {len(expected)} spots of the sample's "
                                       "features, in order: rerun the rule expression_patches")
        self.starts = np.cumsum([0] + [len(b) for b in barcodes])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows)
        out = None
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        for f in np.unique(owner):
            at = np.flatnonzero(owner == f)
            local = rows[at] - self.starts[f]
            order = np.argsort(local)  # h5py reads increasing indices only
            patches = self.files[f]["img"][local[order]]
            if out is None:
                out = np.empty((len(rows), *patches.shape[1:]), np.uint8)
            out[at[order]] = patches
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def close(self) -> None:
        for h5 in self.files:
            h5.close()

    def __enter__(self) -> PatchBank:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def embed_patches(model, encoder: TunedEncoder, bank: PatchBank, compute, batch_size: int = 128) -> torch.Tensor:
    """CMRCNet's image embeddings e_I (n, DIM) of every patch in `bank`, batch by batch."""
    out = []
    for start in range(0, len(bank), batch_size):
        rows = np.arange(start, min(start + batch_size, len(bank)))
        with compute.autocast():
            out.append(model.embed_image(encoder(bank(rows).to(compute.device))).float())
    return torch.cat(out) if out else torch.zeros(0, DIM, device=compute.device)
