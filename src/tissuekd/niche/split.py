"""Radius (per slide) and train/test split (per slide and encoder); the geometry is in
tissuekd.spatial.split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.alignment import crop_reach_um
from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID, XY_UM, Y_UM
from tissuekd.spatial import split as strips
from tissuekd.spatial.split import BUFFER, TEST, TRAIN

log = logging.getLogger(__name__)
# Fewest train cells a slide may leave, fixed a priori: the student and Histology NOLAN reduce H&E
# features to 64 principal components fitted on them (a smaller slide failed inside scikit-learn)
MIN_TRAIN_CELLS = 200


def crop_half_he_px(crop_px: int, encoder_mpp: float, he_mpp: float) -> float:
    """Half-width of a cell's crop in H&E level-0 pixels, with margin for level rounding."""
    return crop_px / 2 * encoder_mpp / he_mpp * 1.02 + 4


def fit_radius(cells_path: str, out: str, *, target: float, n_strips: int, test_strip: int) -> dict:
    """The slide's radius.json: strips, and the radius at which non-test cells have `target`
    neighbours on average. Shared by the teacher and every encoder's student and baselines.

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet (niche_ingest); positions are `x_um`, `y_um` (µm, Xenium frame).
    out : str
        radius.json written.
    target : float
        Mean number of neighbours (cells, the cell itself not counted) within the radius, over the non-test
        cells with neighbours drawn from non-test cells (config niche.target_neighbors).
    n_strips : int
        Horizontal strips of equal height the cells' y extent (µm) is cut into.
    test_strip : int
        0-based index of the test strip, counted from the smallest y (the top of the image).

    Returns
    -------
    dict
        What radius.json holds: `radius_um` (µm), `target_neighbors`, `mean_neighbors`, `strip_edges_um`
        (n_strips + 1 y edges, µm), `n_strips`, `test_strip`, `n_nontest` (cells).
    """
    cells = pd.read_parquet(cells_path)
    try:
        fit = strips.fit_radius(cells[XY_UM].to_numpy(), n_strips, test_strip, target)
    except ValueError as err:
        raise InputError(cells_path, str(err)) from None
    result = {"radius_um": fit.radius_um, "target_neighbors": target, "mean_neighbors": fit.mean_neighbors,
              "strip_edges_um": fit.edges.tolist(), "n_strips": n_strips, "test_strip": test_strip,
              "n_nontest": fit.n_nontest}
    log.info("radius %.2f um (mean %.2f neighbours over %d non-test cells, target %s)", fit.radius_um,
             fit.mean_neighbors, fit.n_nontest, target)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def write_split(cells_path: str, slide_path: str, radius_path: str, out: str, *, crop_px: int,
                encoder_mpp: float) -> pd.DataFrame:
    """One encoder's roles: a train cell's crop and its neighbours' crops stay clear of the
    test strip, so the buffer is the encoder's crop reach (µm, with the H&E's rotation) plus
    the slide's radius.

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet (niche_ingest); roles follow `y_um` (µm, Xenium frame).
    slide_path : str
        The slide's slide.json: `he_mpp` (µm per H&E level-0 px), `affine` and `pixel_size` turn the crop's
        half-width into a reach in µm along y.
    radius_path : str
        The slide's radius.json (fit_radius): strip edges (µm), test strip and `radius_um`.
    out : str
        split.parquet written: `cell_id`, `strip` (0-based) and `role` ("train", "buffer" or "test").
    crop_px : int
        Crop side in encoder pixels, as extract_cell_features cuts it (config encoders.<name>.input_px).
    encoder_mpp : float
        The encoder's resolution, µm/px: a crop spans crop_px * encoder_mpp µm, so it reaches half of that
        (plus a margin) from its cell.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    cells = pd.read_parquet(cells_path)
    slide = json.loads(Path(slide_path).read_text())
    fit = json.loads(Path(radius_path).read_text())
    half = crop_half_he_px(crop_px, encoder_mpp, slide["he_mpp"])
    reach = crop_reach_um(np.asarray(slide["affine"]), slide["pixel_size"], half)
    edges = np.asarray(fit["strip_edges_um"])
    y = cells[Y_UM].to_numpy()
    try:
        roles = strips.split_roles(y, edges, fit["test_strip"], reach, fit["radius_um"], MIN_TRAIN_CELLS)
    except ValueError as err:
        raise InputError(f"slide {slide.get('bundle', cells_path)}", str(err)) from None
    split = pd.DataFrame({CELL_ID: cells[CELL_ID], "strip": strips.strip_index(y, edges), "role": roles})
    counts = split["role"].value_counts().reindex([TRAIN, BUFFER, TEST], fill_value=0).to_dict()
    log.info("crop reach %.1f um + radius %.1f um = buffer %.1f um; %s", reach, fit["radius_um"],
             reach + fit["radius_um"], counts)
    with atomic_path(out) as tmp:
        split.to_parquet(tmp, index=False)
    return split
