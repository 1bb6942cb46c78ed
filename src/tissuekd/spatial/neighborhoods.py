"""Fixed-size neighbourhoods: each cell's neighbours within the shared radius, nearest
first, capped at `max_neighbors`, as padded index/offset arrays a transformer can batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

QUERY_BLOCK = 65_536  # query cells searched at once


@dataclass
class Neighborhoods:
    index: torch.Tensor  # (Q, M) indices into the feature table; padding points at the query itself
    offset: torch.Tensor  # (Q, M, 2) neighbour minus centre, in units of the radius
    mask: torch.Tensor  # (Q, M) True where a real neighbour is

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, rows) -> Neighborhoods:
        return Neighborhoods(self.index[rows], self.offset[rows], self.mask[rows])

    def to(self, device) -> Neighborhoods:
        return Neighborhoods(self.index.to(device), self.offset.to(device), self.mask.to(device))


def build_neighborhoods(xy: np.ndarray, query: np.ndarray, radius: float, max_neighbors: int,
                        allowed: np.ndarray | None = None) -> Neighborhoods:
    """Neighbourhoods of the cells `query` (indices into xy) among the `allowed` cells.

    `allowed` (a boolean mask) restricts which cells may be neighbours: training passes the
    non-test cells so that no test cell enters a training neighbourhood.

    Parameters
    ----------
    xy : np.ndarray
        (cells, 2) positions; the niche steps pass centroids in µm (Xenium frame).
    query : np.ndarray
        (Q,) indices into `xy` of the cells whose neighbourhoods are built.
    radius : float
        Neighbourhood radius, in the units of `xy` (µm); offsets are divided by it.
    max_neighbors : int
        Neighbours kept per cell (M), nearest first; fewer are padded and masked out.
    allowed : np.ndarray or None
        (cells,) bool, the cells that may be neighbours; None: every cell. A cell is never its own neighbour.

    Returns
    -------
    Neighborhoods
        `index` (Q, M), `offset` (Q, M, 2) in radii, `mask` (Q, M).
    """
    xy = np.asarray(xy, dtype=float)
    query = np.asarray(query)
    pool = np.flatnonzero(allowed) if allowed is not None else np.arange(len(xy))
    tree = cKDTree(xy[pool])
    # in blocks of query cells: the search's float64 temporaries (~2.6 kB a cell) stay bounded
    parts = [_block(xy, pool, tree, query[start : start + QUERY_BLOCK], radius, max_neighbors)
             for start in range(0, len(query), QUERY_BLOCK)] or [_block(xy, pool, tree, query, radius, max_neighbors)]
    return Neighborhoods(*(torch.cat(tensors) for tensors in zip(*parts)))



def _block(xy, pool, tree, query, radius, max_neighbors):
    """(index, offset, mask) of one block of query cells, as build_neighborhoods describes."""
    k = min(max_neighbors + 1, len(pool))
    dist, nn = tree.query(xy[query], k=k, distance_upper_bound=radius)
    dist, nn = dist.reshape(len(query), k), nn.reshape(len(query), k)
    found = np.isfinite(dist)
    index = np.where(found, pool[np.minimum(nn, len(pool) - 1)], -1)
    is_self = index == query[:, None]
    mask = found & ~is_self
    # drop the self column (or the farthest one when self is not in the pool) to keep M neighbours
    order = np.argsort(~mask, axis=1, kind="stable")[:, :max_neighbors]
    index, mask = np.take_along_axis(index, order, 1), np.take_along_axis(mask, order, 1)
    index = np.where(mask, index, query[:, None])
    offset = (xy[index] - xy[query][:, None, :]) / radius
    if index.shape[1] < max_neighbors:  # tiny pools: pad to a fixed width
        pad = max_neighbors - index.shape[1]
        index = np.pad(index, ((0, 0), (0, pad)), mode="edge")
        offset = np.pad(offset, ((0, 0), (0, pad), (0, 0)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
    return torch.from_numpy(index).long(), torch.from_numpy(offset).float(), torch.from_numpy(mask)
