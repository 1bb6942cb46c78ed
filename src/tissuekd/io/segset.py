"""What every segmentation reader returns: a `SegSet` of images, instance labels and per-image
names, with `ImageFiles` for folders read one file at a time, and the checks they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

TARGETS = {"whole-cell": 0, "nuclear": 1}  # TissueNet's y[..., 0] and y[..., 1]


@dataclass
class SegSet:
    """Images (each H x W x C, float32 as stored), instance labels (H x W, int32), and per image:
    id, tissue, platform. `images`/`labels` are arrays (N, ...) or sequences of arrays read
    when asked for (`ImageFiles`)."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | list[np.ndarray]
    ids: list[str]
    tissues: list[str]
    platforms: list[str]
    channels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


class ImageFiles(Sequence):
    """The images (or label images) of a folder, each read from its file when asked for:
    `folder[i]` is one array, `folder[a:b]` a list of them."""

    def __init__(self, paths: list[Path], read, shapes: list[tuple[int, int]] | None = None):
        self.paths, self.read, self.shapes = paths, read, shapes  # shapes: (H, W) per image, from the headers

    def require_one_size(self) -> None:
        """Training draws tiles from a stack of one image size: name the first image of another."""
        for path, shape in zip(self.paths, self.shapes):
            if shape != self.shapes[0]:
                raise InputError(path, f"is {shape}, the folder's first image {self.shapes[0]}: "
                                       "a training set needs one image size (evaluation sets may differ)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.read(path) for path in self.paths[i]]
        return self.read(self.paths[int(i)])


def shown(paths) -> list[Path]:
    """Paths without hidden files: macOS copies carry AppleDouble `._<name>` files beside each
    file (not images), and `.DS_Store`."""
    return [p for p in paths if not p.name.startswith(".")]


def id_problem(part: np.ndarray) -> tuple[np.ndarray, str] | None:
    """(images with the problem, what it is) for rows of label pixels that are not instance ids."""
    if np.issubdtype(part.dtype, np.floating):
        infinite = ~np.isfinite(part).all(axis=1)
        if infinite.any():
            return infinite, "NaN or infinite values"
        fractional = (part != np.round(part)).any(axis=1)
        if fractional.any():
            return fractional, "fractional values"
    negative = (part < 0).any(axis=1)
    return (negative, "negative values") if negative.any() else None
