"""Loss terms of the segmentation students (the shared ones live in tissuekd.distill.losses).

Targets per pixel come from instance labels: foreground (label > 0) and boundary (pixels on
an instance's outline, skimage's find_boundaries "inner"), and a weight that grows near the
boundaries, where touching cells are split or merged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.segmentation import find_boundaries


def label_targets(labels: np.ndarray, w0: float = 5.0, sigma: float = 3.0) -> np.ndarray:
    """(3, H, W) float32: foreground, boundary and the boundary weight
    w(x) = 1 + w0 * exp(-d(x)^2 / (2 sigma^2)), d the distance (px) to the nearest boundary
    pixel (the U-Net paper's border weighting, with one distance instead of two)."""
    boundary = find_boundaries(labels, mode="inner")
    distance = ndimage.distance_transform_edt(~boundary) if boundary.any() else np.full(labels.shape, np.inf)
    weight = 1 + w0 * np.exp(-(distance**2) / (2 * sigma**2))
    return np.stack([labels > 0, boundary, weight]).astype(np.float32)


def supervised(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(mean(BCE(s_fg, y_fg)) + mean(BCE(s_bd, y_bd))) / 2: the labels, both maps, unweighted
    (one mean over both channels' pixels)."""
    return F.binary_cross_entropy_with_logits(logits, targets[:, :2])


def boundary_weighted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_x w(x) BCE(s_fg(x), y_fg(x)) / sum_x w(x): foreground BCE weighted by closeness to a
    label boundary (label_targets), so the pixels that decide whether touching cells split count most."""
    weight = targets[:, 2]
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0], reduction="none")
    return (weight * bce).sum() / weight.sum()
