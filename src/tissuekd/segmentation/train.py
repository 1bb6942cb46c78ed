"""Fitting loops of the segmentation study: the multiplex teacher on labels, and the
nuclear-only students with or without distillation, all under one protocol (the same random
crops, flips and rotations, schedule and seed), so that modes differ only in their loss.

Modes of a student:
  no-kd   L = supervised + boundary_weighted                      (labels only)
  kd      L = sum_i exp(-s_i) L_i + s_i over {mse, boundary, label}  (segmentation.losses,
          distill.losses: MSE to the frozen teacher's probabilities, boundary-weighted BCE,
          BCE on the labels; s_i learnt, UncertaintyWeights)

Where only some training images are annotated (`labelled`), no-kd trains on those alone and kd
on every image: the teacher's maps everywhere, the label terms on the annotated crops of each
batch. That is the setting distillation is for: a teacher that reads cell extents from the
membrane channel labels the images nobody annotated.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tissuekd.compute import CPU, Compute
from tissuekd.distill.losses import UncertaintyWeights, probability_mse
from tissuekd.segmentation.losses import boundary_weighted, label_targets, supervised
from tissuekd.segmentation.models import DECODER, build_unet, probabilities
from tissuekd.training import optimise

log = logging.getLogger(__name__)
MODES = ("no-kd", "kd")


@dataclass(frozen=True)
class SegTrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 20  # batches of random crops per epoch
    batch_size: int = 8
    tile: int = 64  # crop side (px), a multiple of 32
    decoder_channels: tuple[int, ...] = DECODER  # the U-Net decoder's widths, deepest stage first
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


class PerImage:
    """Per-image arrays made on demand from a (memory-mapped) split, the last `cache` kept, so
    training never holds a split's normalised images or its targets whole (TissueNet's train
    split: 2,580 images of 512 px, ~8 GB as float32 images and targets). `rows` picks images of
    `source`; `shape` is (len(rows), *one image's shape), as crops draws windows from it."""

    def __init__(self, source, rows, make, cache: int = 128):
        self.source, self.rows, self.make = source, np.asarray(rows), make
        self.shape = (len(self.rows), *np.shape(source[self.rows[0]])) if len(self.rows) else (0,)
        self._get = functools.lru_cache(maxsize=cache)(self._make)

    def _make(self, i: int) -> np.ndarray:
        return self.make(np.asarray(self.source[self.rows[i]]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> np.ndarray:
        return self._get(int(i))


def normalise(images: np.ndarray) -> np.ndarray:
    """Per image and channel: divide by the 99th percentile (platforms differ in gain)."""
    scale = np.percentile(images, 99, axis=(-3, -2), keepdims=True)
    return (images / np.maximum(scale, 1e-6)).astype(np.float32)


def crops(images: np.ndarray, targets: np.ndarray, extra: np.ndarray | None, cfg: SegTrainConfig,
          rng: np.random.Generator):
    """One batch: random tiles of random images, flipped and rotated by 90° alike in every array.
    images (N, H, W, C), targets (N, 3, H, W), extra (N, 2, H, W) or None; returns the
    tensors x, t, e (None without extra) and the images' indices."""
    n, h, w = images.shape[:3]
    pick = rng.integers(0, n, cfg.batch_size)
    rows, cols = rng.integers(0, h - cfg.tile + 1, cfg.batch_size), rng.integers(0, w - cfg.tile + 1, cfg.batch_size)
    turns, flips = rng.integers(0, 4, cfg.batch_size), rng.random(cfg.batch_size) < 0.5
    out = {"x": [], "t": [], "e": []}
    for i, r, c, k, f in zip(pick, rows, cols, turns, flips):
        window = (slice(r, r + cfg.tile), slice(c, c + cfg.tile))
        parts = {"x": np.moveaxis(images[i][window], -1, 0), "t": targets[i][(slice(None), *window)]}
        if extra is not None:
            parts["e"] = extra[i][(slice(None), *window)]
        for key, part in parts.items():
            part = np.rot90(part, k, axes=(1, 2))
            out[key].append(np.ascontiguousarray(part[:, :, ::-1] if f else part))
    return (*(torch.from_numpy(np.stack(out[key])) if out[key] else None for key in ("x", "t", "e")),
            torch.from_numpy(pick))


def fit(backbone: str, images: np.ndarray, labels: np.ndarray, cfg: SegTrainConfig, mode: str = "no-kd",
        teacher_probs: np.ndarray | None = None, compute: Compute = CPU,
        labelled: np.ndarray | None = None) -> nn.Module:
    """Train a U-Net on `images` (N, H, W, C: the channels it sees) against instance `labels`
    (N, H, W); `kd` also against `teacher_probs` (N, 2, H, W). The teacher is fitted the same
    way (mode no-kd) on every channel. `labelled` (N,) bool marks the annotated images (None:
    all); no-kd sees only those, kd every image (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "kd" and teacher_probs is None:
        raise ValueError("mode kd needs the teacher's probabilities")
    labelled = np.ones(len(labels), bool) if labelled is None else np.asarray(labelled, bool)
    if not labelled.any():
        raise ValueError("no annotated image to train on")
    rows = np.flatnonzero(labelled) if mode == "no-kd" else np.arange(len(labels))  # no-kd: annotated only
    labelled = labelled[rows]
    height, width = np.shape(images[0])[:2]
    if cfg.tile > min(height, width):
        raise ValueError(f"training images are {height} x {width} px, smaller than the crops: "
                         f"segmentation.train.tile {cfg.tile} must be at most {min(height, width) // 32 * 32}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    images = PerImage(images, rows, lambda image: normalise(image.astype(np.float32)))
    targets = PerImage(labels, rows, label_targets)
    extra = teacher_probs if mode == "kd" else None  # kd: every image, in order
    model = build_unet(backbone, images.shape[-1], cfg.tile, cfg.decoder_channels).to(compute.device)
    weighting = UncertaintyWeights(("mse", "boundary", "label")).to(compute.device) if mode == "kd" else None

    def batches(epoch):
        return (crops(images, targets, extra, cfg, rng) for _ in range(cfg.steps_per_epoch))

    def loss_of(batch):
        x, t, e, pick = batch
        x, t = x.to(compute.device), t.to(compute.device)
        with compute.autocast():
            logits = model(x)
        logits = logits.float()
        if weighting is None:
            return supervised(logits, t) + boundary_weighted(logits, t)
        known = torch.from_numpy(labelled)[pick].to(compute.device)
        # a batch without an annotated crop has label terms of 0: only the teacher speaks
        if known.any():
            label_terms = {"boundary": boundary_weighted(logits[known], t[known]),
                           "label": supervised(logits[known], t[known])}
        else:
            label_terms = {"boundary": logits.sum() * 0, "label": logits.sum() * 0}
        return weighting({"mse": probability_mse(logits, e.to(compute.device)), **label_terms})

    model.train()
    params = [{"params": list(model.parameters())}]
    if weighting is not None:  # no decay: it would pull every weight back to 1
        params.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    optimise(params, cfg.epochs, batches, loss_of, lr=cfg.lr, weight_decay=cfg.weight_decay, compute=compute,
             total_steps=cfg.epochs * cfg.steps_per_epoch, desc=f"{backbone} {mode}")
    if weighting is not None:
        log.info("%s kd: learnt weights %s", backbone, weighting.weights())
    return model.eval().cpu()


def window_weights(tile: int) -> np.ndarray:
    """(tile, tile) Gaussian weights, σ = tile / 8 (nnU-Net's), for averaging overlapping windows:
    a window's edge, where it saw least context, counts least, so the handover from one window
    to the next leaves no seam (equal weights left a faint lattice at the half-tile step)."""
    g = np.exp(-0.5 * ((np.arange(tile) + 0.5 - tile / 2) / (tile / 8)) ** 2)
    return np.outer(g, g).astype(np.float32)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, tile: int, batch_size: int = 16,
            compute: Compute = CPU) -> np.ndarray:
    """(N, 2, H, W) float32 foreground and boundary probabilities of whole images (N, H, W, C),
    from `tile`-px windows at half-tile steps, averaged where they overlap with `window_weights`
    (Swin takes only its fixed size, and a large image never goes through the network whole).
    Edges are padded by reflection and cropped back. Runs on `compute`'s device and precision."""
    model = model.to(compute.device)
    images = normalise(np.asarray(images, np.float32))
    n, h, w = images.shape[:3]
    step = tile // 2
    size = [max(tile, -(-(d - tile) // step) * step + tile) for d in (h, w)]
    padded = np.pad(images, ((0, 0), (0, size[0] - h), (0, size[1] - w), (0, 0)), mode="reflect")
    windows = [(r, c) for r in range(0, size[0] - tile + 1, step) for c in range(0, size[1] - tile + 1, step)]
    total = np.zeros((n, 2, *size), np.float32)
    weight = window_weights(tile)
    weight_sum = np.zeros(size, np.float32)
    for r, c in windows:
        weight_sum[r:r + tile, c:c + tile] += weight
    for i in range(n):
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            x = np.stack([np.moveaxis(padded[i, r:r + tile, c:c + tile], -1, 0) for r, c in chunk])
            with compute.autocast():
                probs = probabilities(model, torch.from_numpy(x).to(compute.device)).float().cpu().numpy()
            for (r, c), p in zip(chunk, probs):
                total[i, :, r:r + tile, c:c + tile] += p * weight
    return (total / weight_sum)[:, :, :h, :w]
