"""Spot grids: Visium-like hexagonal grids of spots, and cells pooled into them (pseudo-spots
from single-cell spatial data, so a Xenium slide can serve as spot-level data)."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def hex_grid(xmin: float, ymin: float, xmax: float, ymax: float, spacing: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) of a hexagonal grid with `spacing` between neighbours over the box, and
    their (row, col) in Visium's array convention (odd rows shifted by half a spacing, columns
    counted in half steps)."""
    rows = np.arange(ymin, ymax + 1e-9, spacing * np.sqrt(3) / 2)
    xy, rc = [], []
    for r, y in enumerate(rows):
        xs = np.arange(xmin + (spacing / 2) * (r % 2), xmax + 1e-9, spacing)
        xy.append(np.column_stack([xs, np.full(len(xs), y)]))
        rc.append(np.column_stack([np.full(len(xs), r), 2 * np.arange(len(xs)) + r % 2]))
    return np.concatenate(xy), np.concatenate(rc).astype(int)


def assign_to_spots(cells: np.ndarray, spots: np.ndarray, radius: float) -> np.ndarray:
    """Each cell's spot (the nearest centre within `radius`), or -1 outside every spot. One
    nearest-neighbour query per cell (KD-tree on the spots): memory follows the cells."""
    from scipy.spatial import cKDTree  # here: the workflow's planning imports this module

    dist, nearest = cKDTree(spots).query(cells, distance_upper_bound=radius)
    return np.where(np.isfinite(dist), nearest, -1)


POOL_CHUNK_CELLS = 50_000  # cells pooled at a time from a slide's counts (expression.pseudospots)


def pool_counts(counts: sparse.spmatrix, spot_of_cell: np.ndarray, n_spots: int) -> sparse.csr_matrix:
    """(spots, genes): the summed counts of each spot's cells."""
    inside = np.flatnonzero(spot_of_cell >= 0)
    membership = sparse.csr_matrix((np.ones(len(inside), np.float32), (spot_of_cell[inside], inside)),
                                   shape=(n_spots, counts.shape[0]))
    return (membership @ sparse.csr_matrix(counts, dtype=np.float32)).tocsr()
