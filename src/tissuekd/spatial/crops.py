"""Per-cell crops cut from large block reads.

One `read_region` per cell decodes the same JPEG tiles over and over; reading a block
of ~2048 px once and slicing every crop centred inside it decodes each tile once.
Crops are produced in batches so memory never depends on the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from tissuekd.io.wsi import Slide


@dataclass(frozen=True)
class CropGeometry:
    """Where crops come from: pyramid level and side length in that level's pixels."""

    level: int
    level_downsample: float
    source_px: int  # crop side read from the level
    crop_px: int  # crop side handed to the encoder

    @classmethod
    def for_slide(cls, slide: Slide, he_mpp: float, crop_mpp: float, crop_px: int) -> CropGeometry:
        downsample = crop_mpp / he_mpp  # level-0 pixels per encoder pixel
        level = slide.best_level(downsample)
        level_ds = slide.downsamples[level]
        return cls(level, level_ds, max(1, round(crop_px * downsample / level_ds)), crop_px)

    @property
    def half_width_level0(self) -> float:
        return self.source_px * self.level_downsample / 2


def resize_batch(crops: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B,3,S,S) -> uint8 (B,3,size,size), antialiased when shrinking."""
    if crops.shape[-1] == size:
        return crops
    out = F.interpolate(crops.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def iter_crop_batches(
    slide: Slide,
    centers: np.ndarray,
    geometry: CropGeometry,
    batch_size: int = 64,
    block_px: int = 2048,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (cell indices, uint8 crops (B,3,crop_px,crop_px)) with crops centred on `centers`.

    `centers` are level-0 pixel coordinates (x, y). Indices within a batch are increasing,
    so a writer can store each batch with one slice-indexed write per batch.
    """
    s = geometry.source_px
    pts = np.asarray(centers, dtype=float) / geometry.level_downsample
    corners = np.floor(pts - s / 2).astype(np.int64)  # top-left of each crop in level px
    block_of = np.floor_divide(corners, block_px)
    order = np.lexsort((np.arange(len(pts)), block_of[:, 0], block_of[:, 1]))
    starts = np.flatnonzero(np.r_[True, np.any(np.diff(block_of[order], axis=0) != 0, axis=1)])
    batch_idx: list[int] = []
    batch: list[np.ndarray] = []
    for start, stop in zip(starts, np.r_[starts[1:], len(order)]):
        members = order[start:stop]
        x0, y0 = (int(v) * block_px for v in block_of[members[0]])
        block = slide.read(geometry.level, x0, y0, block_px + s, block_px + s)
        for i, (ox, oy) in zip(members, corners[members] - (x0, y0)):
            batch_idx.append(i)
            batch.append(block[oy : oy + s, ox : ox + s])  # a view; copied once when stacked
            if len(batch) == batch_size:
                yield _stack(batch_idx, batch, geometry.crop_px)
                batch_idx, batch = [], []
    if batch:
        yield _stack(batch_idx, batch, geometry.crop_px)


def _stack(idx: list[int], crops: list[np.ndarray], crop_px: int) -> tuple[np.ndarray, torch.Tensor]:
    order = np.argsort(idx)
    stacked = np.stack([crops[j] for j in order])
    tensor = torch.from_numpy(stacked).permute(0, 3, 1, 2)
    return np.asarray(idx)[order], resize_batch(tensor, crop_px)
