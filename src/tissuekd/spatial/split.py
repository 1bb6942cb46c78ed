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
class RadiusFit:
    edges: np.ndarray
    radius_um: float
    mean_neighbors: float
    n_nontest: int


def fit_radius(xy: np.ndarray, n_strips: int, test_strip: int, target: float) -> RadiusFit:
    """The slide's neighbourhood radius, from the density of its non-test cells only: their
    mean neighbour count (neighbours drawn from non-test cells) equals `target`. It does not
    depend on any encoder, so one teacher per slide serves every encoder's student."""
    xy = np.asarray(xy, dtype=float)
    edges = strip_edges(xy[:, 1], n_strips)
    nontest = strip_index(xy[:, 1], edges) != test_strip
    if nontest.all():
        raise ValueError(f"no cells in the test strip (strip {test_strip} of {n_strips})")
    tree = cKDTree(xy[nontest])
    radius = solve_radius(tree, xy[nontest], target)
    mean = float(neighbor_counts(tree, xy[nontest], radius).mean())
    return RadiusFit(edges, float(radius), mean, int(nontest.sum()))


@dataclass
class SplitFit:
    edges: np.ndarray
    radius_um: float
    buffer_um: float
    mean_neighbors: float
    roles: np.ndarray


def split_roles(y: np.ndarray, edges: np.ndarray, test_strip: int, crop_reach_um: float, radius_um: float,
                min_train: int = 1) -> np.ndarray:
    """Roles for one encoder: its crop reach plus the slide's radius is the buffer.

    Parameters
    ----------
    y : np.ndarray
        (cells,) y of each cell, µm.
    edges : np.ndarray
        (n_strips + 1,) strip edges along y, µm (strip_edges).
    test_strip : int
        0-based index of the test strip, from the smallest y.
    crop_reach_um : float
        How far (µm, along y) a cell's H&E crop reaches (io.alignment.crop_reach_um).
    radius_um : float
        The slide's neighbourhood radius, µm.
    min_train : int, default 1
        Fewest train cells accepted.

    Returns
    -------
    np.ndarray
        (cells,) "train", "buffer" or "test".

    Raises
    ------
    ValueError
        When fewer than `min_train` train cells remain.
    """
    roles = assign_roles(y, edges, test_strip, crop_reach_um + radius_um)
    n_train = int((roles == TRAIN).sum())
    if n_train < min_train:
        raise ValueError(f"{n_train} train cells remain of {len(y)} ({y.max() - y.min():.0f} um tall) after a "
                         f"{crop_reach_um + radius_um:.1f} um buffer around the test strip; the niche study needs "
                         f"at least {min_train}: a larger slide (or fewer strips, config niche.n_strips)")
    return roles


def fit_split(xy: np.ndarray, n_strips: int, test_strip: int, crop_reach_um: float, target: float) -> SplitFit:
    """The radius (from non-test cells) and one encoder's train/buffer/test roles.

    Parameters
    ----------
    xy : np.ndarray
        (cells, 2) centroids, µm.
    n_strips : int
        Horizontal strips of equal height over the cells' y extent.
    test_strip : int
        0-based index of the test strip, from the smallest y.
    crop_reach_um : float
        How far (µm, along y) a cell's H&E crop reaches.
    target : float
        Mean neighbour count (cells) the radius is solved for (fit_radius).

    Returns
    -------
    SplitFit
        Strip edges, radius and buffer (µm), mean neighbour count and each cell's role.
    """
    fit = fit_radius(xy, n_strips, test_strip, target)
    roles = split_roles(np.asarray(xy, dtype=float)[:, 1], fit.edges, test_strip, crop_reach_um, fit.radius_um)
    return SplitFit(fit.edges, fit.radius_um, crop_reach_um + fit.radius_um, fit.mean_neighbors, roles)
