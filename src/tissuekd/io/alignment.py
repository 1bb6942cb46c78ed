"""Registration between Xenium microns and H&E pixels.

Xenium's `*_he_imagealignment.csv` is a 3x3 affine that maps H&E pixel coordinates to
morphology-image pixels; morphology pixels are microns / `pixel_size` (from
`experiment.xenium`). Cells are placed on the H&E through the inverse.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

SEPARATORS = re.compile(r"[,;\s]+")
KEYPOINT_COLUMNS = {"fixedx", "fixedy", "alignmentx", "alignmenty"}  # Xenium Explorer's keypoints export


def read_alignment(path: str | Path) -> np.ndarray:
    """Read a 3x3 H&E-px -> morphology-px affine (values separated by commas, semicolons or
    spaces, as Explorer or numpy.savetxt write it; at most one header row)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "H&E alignment file does not exist")
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if lines and KEYPOINT_COLUMNS <= {c.strip().lower() for c in lines[0].replace(";", ",").split(",")}:
        raise InputError(path, "is Xenium Explorer's keypoints table (fixedX, fixedY, alignmentX, alignmentY), "
                               "not the alignment: give the 3x3 matrix CSV Explorer exports beside it "
                               "(*_matrix.csv or *_imagealignment.csv)")
    rows = []
    for number, line in enumerate(lines):
        try:
            rows.append([float(v.strip("'\"")) for v in SEPARATORS.split(line.strip().strip(",;"))])
        except ValueError:
            if number > 0 or not any(c.isalpha() for c in line):  # one leading header row only
                raise InputError(path, f"non-numeric row in alignment matrix: {line!r}") from None
    if len(rows) != 3 or any(len(row) != 3 for row in rows):
        raise InputError(path, f"expected a 3x3 affine matrix, found {len(rows)} row(s) of "
                               f"{sorted({len(r) for r in rows})} value(s)")
    matrix = np.asarray(rows, dtype=float)
    if not np.all(np.isfinite(matrix)):
        raise InputError(path, "alignment matrix contains NaN or infinite values")
    if not np.allclose(matrix[2], [0, 0, 1]):
        raise InputError(path, f"last row of an affine must be 0,0,1, found {matrix[2].tolist()}")
    if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise InputError(path, "alignment matrix is singular (cannot be inverted)")
    return matrix


def _apply(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    return xy @ affine[:2, :2].T + affine[:2, 2]


def um_to_he(xy_um: np.ndarray, affine: np.ndarray, pixel_size: float) -> np.ndarray:
    """Micron coordinates -> H&E level-0 pixels through the inverse alignment."""
    return _apply(np.linalg.inv(affine), np.asarray(xy_um, dtype=float) / pixel_size)


def he_to_um(xy_he: np.ndarray, affine: np.ndarray, pixel_size: float) -> np.ndarray:
    """H&E level-0 pixels -> microns (the alignment's forward direction)."""
    return _apply(affine, xy_he) * pixel_size


def he_mpp(affine: np.ndarray, pixel_size: float) -> float:
    """Microns per H&E pixel implied by the alignment (isotropic mean of its scale)."""
    return float(pixel_size * np.sqrt(abs(np.linalg.det(affine[:2, :2]))))


def crop_reach_um(affine: np.ndarray, pixel_size: float, half_width_he_px: float) -> float:
    """How far (in microns, along y) an axis-aligned H&E crop of this half-width reaches.

    H&E crops are squares in H&E pixels; under a rotated alignment their footprint in
    micron space is a rotated square whose y half-extent is h * (|L10| + |L11|).
    """
    linear = affine[:2, :2] * pixel_size
    return float(half_width_he_px * (abs(linear[1, 0]) + abs(linear[1, 1])))
