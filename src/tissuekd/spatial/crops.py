"""Per-cell crops cut from large block reads.

One `read_region` per cell decodes the same JPEG tiles over and over; reading a block
of ~2048 px once and slicing every crop centred inside it decodes each tile once.
Crops are produced in batches so memory never depends on the number of cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from tissuekd.io.wsi import Slide


@dataclass(frozen=True)
class CropGeometry:
    """Where crops come from: the pyramid level, and how many level pixels make one encoder pixel."""

    level: int
    level_downsample: float
    scale: float  # level pixels per encoder pixel (1.0: cut as is; otherwise the block is resampled)
    crop_px: int  # crop side handed to the encoder

    @classmethod
    def for_slide(cls, slide: Slide, he_mpp: float, crop_mpp: float, crop_px: int) -> CropGeometry:
        downsample = crop_mpp / he_mpp  # level-0 pixels per encoder pixel
        level = slide.best_level(downsample)
        scale = downsample / slide.downsamples[level]
        return cls(level, slide.downsamples[level], 1.0 if abs(scale - 1) < 0.01 else scale, crop_px)

    @property
    def source_px(self) -> int:
        """Crop side in level pixels."""
        return int(np.ceil(self.crop_px * self.scale))

    @property
    def half_width_level0(self) -> float:
        return self.crop_px * self.scale * self.level_downsample / 2


def resample_block(block: np.ndarray, scale: float) -> np.ndarray:
    """Resample a whole block to encoder pixels once, instead of every (overlapping) crop.

    Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
    """
    if scale == 1.0:
        return block
    height, width = block.shape[:2]
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return np.asarray(Image.fromarray(block).resize(size, Image.Resampling.BILINEAR))


def iter_crop_batches(
    slide: Slide,
    centers: np.ndarray,
    geometry: CropGeometry,
    batch_size: int = 64,
    block_px: int = 2048,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (cell indices, uint8 crops (B,3,crop_px,crop_px)) with crops centred on `centers`.

    `centers` are level-0 pixel coordinates (x, y). Indices within a batch are increasing,
    so a writer can store each batch with one slice-indexed write per batch. `shard=(k, n)`
    yields only every n-th block starting at k (one share of n parallel readers).

    Parameters
    ----------
    slide : Slide
        The open slide.
    centers : np.ndarray
        (n, 2) crop centres (x, y), level-0 px.
    geometry : CropGeometry
        The pyramid level read, its resampling to encoder pixels and the crop side (`crop_px`, encoder px).
    batch_size : int, default 64
        Crops per batch.
    block_px : int, default 2048
        Side of the blocks read at once, in pixels of `geometry.level`.
    shard : tuple of int, default (0, 1)
        (k, n): this reader's share of the blocks.

    Yields
    ------
    indices : np.ndarray
        (B,) increasing rows of `centers`.
    crops : torch.Tensor
        (B, 3, crop_px, crop_px) uint8.
    """
    if len(centers) == 0:  # e.g. a slide without tissue
        return
    s, c = geometry.source_px, geometry.crop_px
    pts = np.asarray(centers, dtype=float) / geometry.level_downsample  # level pixels
    block_of = np.floor_divide(np.floor(pts - s / 2), block_px).astype(np.int64)
    order = np.lexsort((np.arange(len(pts)), block_of[:, 0], block_of[:, 1]))
    starts = np.flatnonzero(np.r_[True, np.any(np.diff(block_of[order], axis=0) != 0, axis=1)])
    batch_idx: list[int] = []
    batch: list[np.ndarray] = []
    bounds = list(zip(starts, np.r_[starts[1:], len(order)]))
    for start, stop in bounds[shard[0] :: shard[1]]:
        members = order[start:stop]
        origin = block_of[members[0]] * block_px
        raw = slide.read(geometry.level, int(origin[0]), int(origin[1]), block_px + s + 1, block_px + s + 1)
        block = resample_block(raw, geometry.scale)
        corners = np.floor((pts[members] - origin) / geometry.scale - c / 2).astype(np.int64)
        corners = np.clip(corners, 0, np.array(block.shape[1::-1]) - c)
        for i, (ox, oy) in zip(members, corners):
            batch_idx.append(i)
            batch.append(block[oy : oy + c, ox : ox + c])  # a view; copied once when stacked
            if len(batch) == batch_size:
                yield _stack(batch_idx, batch)
                batch_idx, batch = [], []
    if batch:
        yield _stack(batch_idx, batch)


def _stack(idx: list[int], crops: list[np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
    order = np.argsort(idx)
    stacked = np.stack([crops[j] for j in order])
    return np.asarray(idx)[order], torch.from_numpy(stacked).permute(0, 3, 1, 2)


class CropBatches(torch.utils.data.IterableDataset):
    """The crop batches of one slide as a dataset, so a DataLoader worker process can read
    and cut crops while the main process encodes (no GIL shared with the encoder)."""

    def __init__(self, path, backend: str, centers: np.ndarray, geometry: CropGeometry,
                 batch_size: int = 64, block_px: int = 2048):
        super().__init__()
        self.path, self.backend, self.centers = path, backend, centers
        self.geometry, self.batch_size, self.block_px = geometry, batch_size, block_px

    def __iter__(self):
        from tissuekd.io.wsi import open_slide

        worker = torch.utils.data.get_worker_info()
        shard = (worker.id, worker.num_workers) if worker else (0, 1)  # each worker reads its own blocks
        with open_slide(self.path, self.backend) as slide:  # opened here: slides do not cross processes
            yield from iter_crop_batches(slide, self.centers, self.geometry, self.batch_size, self.block_px, shard)


def default_workers(device: torch.device) -> int:
    """Crop-reader processes for a device. CPU: none — the block reader cuts >10,000 crops/s,
    two orders above a CPU encoder, so a worker would only take a core from it (measured on
    2 cores: 2 torch threads and no worker kept 0.9-1.0 of the encoder-alone rate; README,
    "Performance"). GPU: every core the job has but one, at most 8, to keep the GPU fed."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(8, cores - 1))


def crop_loader(dataset: CropBatches, workers: int = 0):
    """Batches from `workers` reader processes; 0 reads in this process (best on a CPU-only
    machine, where a worker would only take cores from the encoder)."""
    if workers == 0:
        return dataset
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4)


class StoredPatchBatches:
    """Batches (rows, uint8 (B, 3, px, px)) of a HEST patch file's stored patches (`img`), resized
    to `px` as the crop reader resamples its blocks (resample_block): rows index `order`, the
    patch file's index of each output row."""

    def __init__(self, path: str | Path, order: np.ndarray, px: int, batch_size: int = 64):
        self.path, self.order, self.px, self.batch_size = path, np.asarray(order), px, batch_size

    def __iter__(self):
        with h5py.File(self.path, "r") as h5:
            img = h5["img"]
            scale = img.shape[1] / self.px
            for start in range(0, len(self.order), self.batch_size):
                rows = np.arange(start, min(start + self.batch_size, len(self.order)))
                index = self.order[rows]
                by_file = np.argsort(index)  # h5py reads increasing indices only
                patches = np.empty((len(rows), *img.shape[1:]), np.uint8)
                patches[by_file] = img[index[by_file]]
                crops = np.stack([resample_block(patch, scale) for patch in patches])
                yield rows, torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
