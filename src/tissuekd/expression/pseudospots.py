"""Xenium pseudo-spots: a niche-study slide's ingested cells pooled into a Visium-like grid,
so one Xenium data set serves both studies. Spot expression is the sum of its cells' counts;
the H&E is the slide's registered image, and spot centres are in its level-0 pixels."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from tissuekd.errors import InputError
from tissuekd.io.hest import SpotSample
from tissuekd.spatial.spots import POOL_CHUNK_CELLS, assign_to_spots, hex_grid, pool_counts


def read_pseudospots(cells: str | Path, expression: str | Path, slide: str | Path, name: str,
                     diameter_um: float = 55.0, spacing_um: float = 100.0, min_cells: int = 1) -> SpotSample:
    """Spots of `diameter_um` every `spacing_um` over the slide's cells (niche_ingest outputs:
    cells.parquet with x_he/y_he, expression.h5ad with raw counts, slide.json with he_mpp);
    spots holding fewer than `min_cells` cells are left out."""
    table = pd.read_parquet(cells, columns=["cell_id", "x_he", "y_he"])
    mpp = float(json.loads(Path(slide).read_text())["he_mpp"])
    xy = table[["x_he", "y_he"]].to_numpy(dtype=np.float64)
    lo, hi = xy.min(0), xy.max(0)
    centres, rc = hex_grid(lo[0], lo[1], hi[0], hi[1], spacing_um / mpp)
    spot_of_cell = assign_to_spots(xy, centres, diameter_um / 2 / mpp)
    n_cells = np.bincount(spot_of_cell[spot_of_cell >= 0], minlength=len(centres))
    keep = n_cells >= min_cells
    if not keep.any():
        raise InputError(cells, f"no {diameter_um:g}-µm spot holds {min_cells} cell(s)")
    pooled, genes = pooled_counts(expression, table["cell_id"].astype(str).to_numpy(), spot_of_cell, len(centres),
                                  cells)
    barcodes = np.array([f"{name}-{r:03d}x{c:03d}" for r, c in rc[keep]])
    return SpotSample(barcodes, centres[keep], pooled[keep], genes, mpp, diameter_um)


def pooled_counts(expression: str | Path, cell_ids: np.ndarray, spot_of_cell: np.ndarray, n_spots: int,
                  cells: str | Path, chunk: int = POOL_CHUNK_CELLS) -> tuple[sparse.csr_matrix, np.ndarray]:
    """(spots, genes) summed counts and the genes, read from the h5ad `chunk` cells at a time
    (backed): a slide's counts are never held whole, only its spots'."""
    counts = ad.read_h5ad(expression, backed="r")
    try:
        if not np.array_equal(np.asarray(counts.obs_names, dtype=str), cell_ids):
            raise InputError(expression, f"cells are not those of {cells}, in its order")
        pooled = sparse.csr_matrix((n_spots, counts.n_vars), dtype=np.float32)
        for start in range(0, counts.n_obs, chunk):
            stop = min(start + chunk, counts.n_obs)
            if (spot_of_cell[start:stop] >= 0).any():  # cells between spots are not read into any
                pooled += pool_counts(counts.X[start:stop], spot_of_cell[start:stop], n_spots)
        return pooled, np.asarray(counts.var_names, dtype=str)
    finally:
        counts.file.close()
