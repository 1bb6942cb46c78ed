"""Radius and train/test split of one slide (see tissuekd.spatial.split for the rule)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.alignment import crop_reach_um
from tissuekd.io.atomic import atomic_path
from tissuekd.spatial.split import TEST, TRAIN, BUFFER, assign_roles, fit_split, strip_index

log = logging.getLogger(__name__)


def crop_half_he_px(crop_px: int, encoder_mpp: float, he_mpp: float) -> float:
    """Half-width of a cell's crop in H&E level-0 pixels, with margin for level rounding."""
    return crop_px / 2 * encoder_mpp / he_mpp * 1.02 + 4


def fit_radius(cells_path: str, slide_path: str, out: str, *, target: float, n_strips: int, test_strip: int,
               crop_px: int, encoder_mpp: float) -> dict:
    cells = pd.read_parquet(cells_path)
    slide = json.loads(open(slide_path).read())
    half = crop_half_he_px(crop_px, encoder_mpp, slide["he_mpp"])
    reach = crop_reach_um(np.asarray(slide["affine"]), slide["pixel_size"], half)
    try:
        fit = fit_split(cells[["x_um", "y_um"]].to_numpy(), n_strips, test_strip, reach, target)
    except ValueError as err:
        raise InputError(cells_path, str(err)) from None
    counts = {role: int((fit.roles == role).sum()) for role in (TRAIN, BUFFER, TEST)}
    result = {
        "radius_um": fit.radius_um, "target_neighbors": target, "mean_neighbors": fit.mean_neighbors,
        "crop_reach_um": reach, "buffer_um": fit.buffer_um, "strip_edges_um": fit.edges.tolist(),
        "n_strips": n_strips, "test_strip": test_strip, **{f"n_{k}": v for k, v in counts.items()},
    }
    log.info("radius %.2f um (mean %.2f neighbours, target %s); buffer %.1f um; %s",
             fit.radius_um, fit.mean_neighbors, target, fit.buffer_um, counts)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def write_split(cells_path: str, radius_path: str, out: str) -> pd.DataFrame:
    cells = pd.read_parquet(cells_path)
    fit = json.loads(open(radius_path).read())
    edges = np.asarray(fit["strip_edges_um"])
    y = cells["y_um"].to_numpy()
    split = pd.DataFrame({
        "cell_id": cells["cell_id"],
        "strip": strip_index(y, edges),
        "role": assign_roles(y, edges, fit["test_strip"], fit["buffer_um"]),
    })
    with atomic_path(out) as tmp:
        split.to_parquet(tmp, index=False)
    return split
