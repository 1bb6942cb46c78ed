"""Train/test split in horizontal strips with a leakage buffer.

Cells are cut into `n_strips` horizontal strips over their y extent (microns); one strip
is the test set. A train cell is kept only if neither its H&E crop nor any neighbour's
crop can see the test strip: its distance to the strip must be at least
`crop_reach + radius` (a neighbour lies within `radius`, and its crop reaches
`crop_reach` further). Cells in that band are `buffer` and are never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from tissuekd.spatial.radius import neighbor_counts, solve_radius

TRAIN, BUFFER, TEST = "train", "buffer", "test"


def strip_edges(y: np.ndarray, n_strips: int) -> np.ndarray:
    """n_strips + 1 edges over the y range of all cells (top = smallest y, as in image rows)."""
    return np.linspace(float(np.min(y)), float(np.max(y)), n_strips + 1)


def strip_index(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)


def distance_to_strip(y: np.ndarray, edges: np.ndarray, strip: int) -> np.ndarray:
    top, bottom = edges[strip], edges[strip + 1]
    return np.maximum(np.maximum(top - y, y - bottom), 0.0)


def assign_roles(y: np.ndarray, edges: np.ndarray, test_strip: int, buffer_um: float) -> np.ndarray:
    inside = strip_index(y, edges) == test_strip
    far = distance_to_strip(y, edges, test_strip) >= buffer_um
    return np.where(inside, TEST, np.where(far, TRAIN, BUFFER))


@dataclass
class SplitFit:
    edges: np.ndarray
    radius_um: float
    buffer_um: float
    mean_neighbors: float
    roles: np.ndarray


def fit_split(xy: np.ndarray, n_strips: int, test_strip: int, crop_reach_um: float, target: float) -> SplitFit:
    """Find the radius and the train set together; they depend on each other.

    The radius is fitted on train cells (their neighbours drawn from non-test cells
    only: no test position is used), and the train set depends on the radius through
    the buffer. Iterate to the fixed point; it converges in a few steps because the
    radius changes little once the buffer stops moving.
    """
    xy = np.asarray(xy, dtype=float)
    edges = strip_edges(xy[:, 1], n_strips)
    if not (strip_index(xy[:, 1], edges) == test_strip).any():
        raise ValueError(f"no cells in the test strip (strip {test_strip} of {n_strips})")
    nontest = strip_index(xy[:, 1], edges) != test_strip
    tree = cKDTree(xy[nontest])
    radius = solve_radius(tree, xy[nontest], target)
    for _ in range(20):
        roles = assign_roles(xy[:, 1], edges, test_strip, crop_reach_um + radius)
        train = roles == TRAIN
        if not train.any():
            raise ValueError(f"no train cells remain after a {crop_reach_um + radius:.1f} um buffer around the test strip")
        new_radius = solve_radius(tree, xy[train], target)
        if np.isclose(new_radius, radius, rtol=1e-6):
            break
        radius = new_radius
    radius = new_radius
    roles = assign_roles(xy[:, 1], edges, test_strip, crop_reach_um + radius)
    mean = float(neighbor_counts(tree, xy[roles == TRAIN], radius).mean())
    return SplitFit(edges, float(radius), float(crop_reach_um + radius), mean, roles)
