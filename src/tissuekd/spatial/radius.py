"""Density-adaptive neighbourhood radius.

The radius r is chosen so that the mean number of neighbours within r (the cell itself
excluded) over the query cells equals a target. Teacher and student share it.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def neighbor_counts(tree: cKDTree, query_xy: np.ndarray, radius: float, self_in_tree: bool = True) -> np.ndarray:
    counts = tree.query_ball_point(query_xy, r=radius, return_length=True)
    return counts - 1 if self_in_tree else counts


def solve_radius(tree: cKDTree, query_xy: np.ndarray, target: float, tol: float = 0.01) -> float:
    """Bisection on r until the mean neighbour count is within `tol` (relative) of target."""
    if len(query_xy) == 0:
        raise ValueError("no cells to fit the neighbourhood radius on")
    if tree.n - 1 < target:
        raise ValueError(f"only {tree.n} cells; cannot reach {target} neighbours per cell")
    # Upper bracket: the distance to the target-th neighbour bounds r for most cells; double until enough.
    k = min(int(np.ceil(target)) + 1, tree.n)
    lo, hi = 0.0, float(np.median(tree.query(query_xy, k=k)[0][:, -1])) or 1.0
    while neighbor_counts(tree, query_xy, hi).mean() < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        mean = neighbor_counts(tree, query_xy, mid).mean()
        if abs(mean - target) <= tol * target:
            return mid
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return (lo + hi) / 2
