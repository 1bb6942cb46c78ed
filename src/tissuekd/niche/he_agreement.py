"""Do the registered cells sit on the H&E's nuclei? A check of the image and its alignment that
the scale check (ingest.check_he_scale) cannot make: another slide's H&E of the same resolution,
a mirrored or rotated alignment, or one off by a cell or more all pass that.

Cells are counted, and the H&E's haematoxylin (skimage's colour deconvolution) averaged, in
square bins of BIN_UM (about a cell); their Pearson correlation over the bins is taken at the
alignment and, for reference, with the cells moved 24 and 48 µm in eight directions. Where the
alignment is right the correlation peaks at it (nuclei are where the cells are): `z`, how many
standard deviations of the 16 references it stands above their mean, is large. Below MIN_Z the
ingest step warns, naming both files. MIN_Z is fixed a priori (three standard deviations), not
fitted; a warning, not an error, since a real stain may be too faint to show a peak. Measured on
demo slides (tests/test_registration.py): z 9.0 and 9.6 at their own alignments, 7.1 and 4.9 with
the cells 3 and 5 µm off; 1.8 at 10 µm off, 2.3 on another breast slide's H&E, 0.4 on a lung
slide's, 2.4 rotated by 180°, 0.9 mirrored.
"""

from __future__ import annotations

import math

import numpy as np
from skimage import color

from tissuekd.io.wsi import Slide, thumbnail

BIN_UM = 8.0  # about a cell across
MOVES_UM = (24.0, 48.0)  # the reference positions: the cells moved this far in eight directions
MIN_Z = 3.0  # r at the alignment this many SDs of the references above their mean: a peak
PIXELS_PER_BIN = 3  # the thumbnail's resolution: at most BIN_UM / 3 µm per pixel
BAND_ROWS = 512  # the deconvolution works on bands of rows (float64, 24 B a pixel)


def stain_agreement(slide: Slide, he_xy: np.ndarray, he_mpp: float) -> dict | None:
    """`r`, the correlation of cell counts and mean haematoxylin per bin at the alignment; the
    references' mean and largest (`r_moved`, `r_moved_max`); `z`, r's standing above them. None
    where the slide has no level fine enough for bins of BIN_UM (its coarsest levels only)."""
    width, height = slide.dimensions
    image, downsample = thumbnail(slide, math.ceil(max(width, height) * he_mpp * PIXELS_PER_BIN / BIN_UM))
    bin_px = BIN_UM / (he_mpp * downsample)  # thumbnail pixels per bin
    if bin_px < 1:
        return None
    stain = _binned_stain(image, bin_px)
    bin_level0 = bin_px * downsample
    r = _correlation(stain, he_xy, bin_level0)
    angles = np.radians(np.arange(0, 360, 45))
    moves = [distance / he_mpp * np.array([np.cos(a), np.sin(a)]) for distance in MOVES_UM for a in angles]
    moved = np.array([_correlation(stain, he_xy + move, bin_level0) for move in moves])
    z = (r - moved.mean()) / moved.std() if moved.std() > 0 else 0.0
    return {"r": round(r, 4), "r_moved": round(float(moved.mean()), 4), "r_moved_max": round(float(moved.max()), 4),
            "z": round(float(z), 2), "bin_um": BIN_UM}


def _binned_stain(image: np.ndarray, bin_px: float) -> np.ndarray:
    """(rows, cols) mean haematoxylin per whole bin of the thumbnail."""
    rows, cols = int(image.shape[0] // bin_px), int(image.shape[1] // bin_px)
    col_bin = (np.arange(int(cols * bin_px)) // bin_px).astype(np.int64)
    total = np.zeros(rows * cols)
    for start in range(0, int(rows * bin_px), BAND_ROWS):
        band = image[start:min(start + BAND_ROWS, int(rows * bin_px)), : len(col_bin)]
        row_bin = (np.arange(start, start + len(band)) // bin_px).astype(np.int64)
        flat = (row_bin[:, None] * cols + col_bin[None, :]).ravel()
        total += np.bincount(flat, color.rgb2hed(band)[..., 0].ravel(), minlength=rows * cols)
    counts = np.bincount((np.arange(int(rows * bin_px)) // bin_px).astype(np.int64), minlength=rows)[:, None] \
        * np.bincount(col_bin, minlength=cols)[None, :]
    return (total / counts.ravel()).reshape(rows, cols)


def _correlation(stain: np.ndarray, xy: np.ndarray, bin_level0: float) -> float:
    rows, cols = stain.shape
    col, row = (xy[:, 0] // bin_level0).astype(np.int64), (xy[:, 1] // bin_level0).astype(np.int64)
    inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    cells = np.bincount(row[inside] * cols + col[inside], minlength=rows * cols)
    if cells.std() == 0 or stain.std() == 0:
        return 0.0
    return float(np.corrcoef(stain.ravel(), cells)[0, 1])
