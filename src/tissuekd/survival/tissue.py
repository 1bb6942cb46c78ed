"""Tissue mask on a thumbnail and the patch grid at a target magnification.

The mask is Otsu's threshold on HSV saturation (glass is unsaturated, stained tissue is not),
after a median filter, with a floor so that a blank slide is not split into "tissue" and "glass" by noise, then
specks and holes below a size are removed (scikit-image). A patch is kept when enough of
its footprint on the mask is tissue. Coordinates are level-0 pixels of the patch's top-left
corner, as TRIDENT and CLAM store them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from skimage import color, filters, morphology

from tissuekd.errors import InputError
from tissuekd.io.wsi import Slide, thumbnail

log = logging.getLogger(__name__)

MIN_SATURATION = 0.08  # below this no pixel counts as stained, whatever Otsu says
THUMBNAIL_PX = 2048  # longest side the mask is computed at (or the coarsest level, if smaller)


@dataclass(frozen=True)
class Grid:
    coords: np.ndarray  # (n, 2) int64, top-left corners in level-0 pixels (x, y)
    patch_px: int  # side of a patch at the target magnification
    patch_level0: int  # the same side in level-0 pixels
    target_mpp: float
    slide_mpp: float
    tissue_fraction: np.ndarray  # (n,) share of each patch that is tissue


def slide_mpp(slide: Slide, override: float | None = None) -> float:
    """µm per level-0 pixel: the sheet's value, else the file's mpp, else 10 / objective power."""
    if override:
        return float(override)
    if slide.mpp:
        return float(slide.mpp)
    if slide.objective_power:
        log.warning("%s: no mpp in the file; %g µm/px assumed from its objective power (%gx): give the slide "
                    "sheet's `mpp` column if the scanner's differs", slide.path, 10.0 / slide.objective_power,
                    slide.objective_power)
        return 10.0 / slide.objective_power
    raise InputError(slide.path, "no resolution in the file (neither mpp nor objective power); "
                                 "give it in the slide sheet's `mpp` column")


def tissue_mask(rgb: np.ndarray, min_area_px: int = 64) -> np.ndarray:
    """Boolean mask of stained tissue; specks and holes smaller than `min_area_px` removed."""
    # a median filter first (as CLAM does): sparse nuclei on pale stroma then read as one tissue
    saturation = filters.median(color.rgb2hsv(rgb)[..., 1], morphology.disk(3))
    if saturation.max() < MIN_SATURATION:
        return np.zeros(saturation.shape, bool)
    cut = max(filters.threshold_otsu(saturation), MIN_SATURATION)
    mask = saturation > cut
    mask = morphology.remove_small_objects(mask, max_size=min_area_px)
    return morphology.remove_small_holes(mask, max_size=min_area_px)


def patch_grid(mask: np.ndarray, mask_downsample: float, level0_size: tuple[int, int], patch_level0: int,
               min_tissue: float) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping patches over the slide whose tissue share on the mask is >= min_tissue.

    Parameters
    ----------
    mask : np.ndarray
        (rows, cols) bool tissue mask of the thumbnail.
    mask_downsample : float
        Level-0 px per mask pixel.
    level0_size : tuple of int
        (width, height) of the slide at level 0, px.
    patch_level0 : int
        Patch side in level-0 px (also the grid's step).
    min_tissue : float
        Share of a patch's footprint on the mask (0 to 1) that must be tissue.

    Returns
    -------
    coords : np.ndarray
        (n, 2) int64 top-left corners (x, y), level-0 px.
    shares : np.ndarray
        (n,) float32 tissue share of each kept patch.
    """
    width, height = level0_size
    xs = np.arange(0, width - patch_level0 + 1, patch_level0)
    ys = np.arange(0, height - patch_level0 + 1, patch_level0)
    coords, shares = [], []
    for y in ys:
        for x in xs:
            r0, c0 = int(y / mask_downsample), int(x / mask_downsample)
            r1 = max(r0 + 1, int(np.ceil((y + patch_level0) / mask_downsample)))
            c1 = max(c0 + 1, int(np.ceil((x + patch_level0) / mask_downsample)))
            share = float(mask[r0:r1, c0:c1].mean()) if r0 < mask.shape[0] and c0 < mask.shape[1] else 0.0
            if share >= min_tissue:
                coords.append((x, y))
                shares.append(share)
    return np.asarray(coords, dtype=np.int64).reshape(-1, 2), np.asarray(shares, dtype=np.float32)


def grid_for_slide(slide: Slide, magnification: float, patch_px: int, min_tissue: float,
                   mpp_override: float | None = None) -> tuple[Grid, np.ndarray, np.ndarray, float]:
    """The slide's patch grid at `magnification` (10 / magnification µm/px), with the thumbnail,
    mask and the thumbnail's downsample (for drawing).

    Parameters
    ----------
    slide : Slide
        The open slide.
    magnification : float
        Magnification the patches are taken at (20: 0.5 µm/px).
    patch_px : int
        Patch side in pixels at that magnification.
    min_tissue : float
        Share of a patch (0 to 1) that must be tissue.
    mpp_override : float or None
        µm per level-0 px from the slide sheet, overriding the file's; None: slide_mpp's fallbacks.

    Returns
    -------
    grid : Grid
        Kept patches (level-0 top-left corners), their sides at target and level 0, and both mpp.
    thumbnail : np.ndarray
        (rows, cols, 3) uint8 RGB thumbnail.
    mask : np.ndarray
        (rows, cols) bool tissue mask of the thumbnail.
    downsample : float
        Level-0 px per thumbnail pixel.
    """
    mpp = slide_mpp(slide, mpp_override)
    target_mpp = 10.0 / magnification
    patch_level0 = int(round(patch_px * target_mpp / mpp))
    if patch_level0 < 1 or patch_level0 > min(slide.dimensions):
        raise InputError(slide.path, f"a {patch_px} px patch at {magnification}x is {patch_level0} px at level 0 "
                                     f"(slide {slide.dimensions[0]}x{slide.dimensions[1]} px at {mpp:.3g} µm/px)")
    image, downsample = thumbnail(slide, THUMBNAIL_PX)
    mask = tissue_mask(image)
    coords, shares = patch_grid(mask, downsample, slide.dimensions, patch_level0, min_tissue)
    grid = Grid(coords, patch_px, patch_level0, target_mpp, mpp, shares)
    return grid, image, mask, downsample
