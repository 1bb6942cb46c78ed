"""BBBC038 (2018 Data Science Bowl) folders: `<id>/images/<id>.png` and `<id>/masks/*.png`, one
binary mask per nucleus; images are read when asked for, as they differ in size."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tissuekd.errors import InputError
from tissuekd.io.segset import ImageFiles, SegSet, shown

log = logging.getLogger(__name__)


def read_bbbc038(folder: str | Path, ids: Sequence[str] | None = None, tissue: str = "nuclei",
                 platform: str = "bbbc038") -> SegSet:
    """BBBC038 / 2018 Data Science Bowl stage-1 training layout: `<id>/images/<id>.png` and
    `<id>/masks/*.png`, one binary mask per nucleus. Grey or RGB(A) images become one nuclear
    channel (the mean of the colour channels); masks become one instance image (1..n, in the
    order of the sorted mask names). Images are read when asked for (`ImageFiles`); every id is
    checked here for its image and masks of its size (from the PNG headers), so a folder without
    masks (the stage-1 test release) or with a mask of another size is named before any job runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a BBBC038 folder (<id>/images/<id>.png, <id>/masks/*.png)")
    ids = sorted(p.name for p in folder.iterdir() if (p / "images").is_dir()) if ids is None else list(ids)
    if not ids:
        raise InputError(folder, "no images: expected <id>/images/<id>.png folders")
    shapes = []
    for name in ids:
        shapes.append(png_shape(folder / name / "images" / f"{name}.png"))
        masks = sorted(shown((folder / name / "masks").glob("*.png")))
        if not masks:
            raise InputError(folder / name / "masks", "no mask files (BBBC038 labels are <id>/masks/*.png, one per "
                                                      "nucleus)")
        for mask in masks:  # headers only: ~0.1 ms a mask
            if (shape := png_shape(mask)) != shapes[-1]:
                raise InputError(mask, f"mask is {shape}, its image {shapes[-1]}")
    images = [folder / name / "images" / f"{name}.png" for name in ids]
    labels = ImageFiles([folder / name / "masks" for name in ids], _bbbc038_labels, shapes)
    return SegSet(ImageFiles(images, _nuclear_png, shapes), labels, ids,
                  [tissue] * len(ids), [platform] * len(ids), ("nuclear",))


def _nuclear_png(path: Path) -> np.ndarray:
    return _grey(path)[..., None]


def png_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header (no pixels read)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err})") from None


def _bbbc038_labels(masks: Path) -> np.ndarray:
    """One instance image from a BBBC038 masks folder: mask k (sorted by name) is label k. The
    release's masks do not overlap; where a folder's do, the later mask takes the pixels, counted
    in a warning (an object may then lose most of itself)."""
    name = masks.parent.name
    shape = png_shape(masks.parent / "images" / f"{name}.png")
    label = np.zeros(shape, np.int32)
    overlap = 0
    for k, mask_path in enumerate(sorted(shown(masks.glob("*.png"))), start=1):
        try:
            mask = np.asarray(Image.open(mask_path))
        except (OSError, ValueError) as err:
            raise InputError(mask_path, f"unreadable mask ({err})") from None
        if mask.shape[:2] != shape:
            raise InputError(mask_path, f"mask is {mask.shape[:2]}, its image {shape}")
        inside = (mask if mask.ndim == 2 else mask[..., 0]) > 0
        overlap += int(np.count_nonzero(label[inside]))
        label[inside] = k
    if overlap:
        log.warning("%s: masks overlap on %d pixels; each goes to the later mask", masks, overlap)
    return label


def _grey(path: Path) -> np.ndarray:
    try:
        image = Image.open(path)
        if image.mode in ("P", "PA", "LA"):  # palette indices, or grey with alpha: to intensities, alpha apart
            image = image.convert("RGBA")
        image = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err})") from None
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    return image
