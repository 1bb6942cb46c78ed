"""The niche study's comparison methods on H&E features. Histology NOLAN is the teacher's own
method (tissuekd.niche.train.fit_nolan) fitted on H&E features, so only Histology Leiden lives
here: Leiden clustering (leidenalg on an igraph kNN graph) of H&E features,
with the resolution searched until it yields the requested number of clusters."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd

from tissuekd.encoders.reduce import reduce_file
from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID
from tissuekd.niche.tables import check_feature_ids

log = logging.getLogger(__name__)


EXACT_BELOW = 200_000  # cells; above this the kNN search is approximate (HNSW)


def nearest_neighbors(z: np.ndarray, k: int) -> np.ndarray:
    """The `k` nearest other rows of each row of `z` (faiss): exact below EXACT_BELOW rows
    (~1 min at that size on 2 cores), HNSW above, where exact search grows with N^2."""
    import faiss

    n, d = z.shape
    if n <= EXACT_BELOW:
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efSearch = max(64, 2 * k)
    index.add(np.ascontiguousarray(z, dtype=np.float32))
    _, nn = index.search(np.ascontiguousarray(z, dtype=np.float32), k + 1)
    # drop each row itself (or, where duplicates hide it, the farthest of the k + 1)
    own = nn == np.arange(n)[:, None]
    return np.where(own, nn[:, -1:], nn)[:, :-1]


def knn_graph(features_path: str, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0):
    """Undirected kNN graph of every cell on standardised, PCA-reduced features (the scanpy
    recipe: z-score, PCA, kNN). The features file is read in chunks and PCA is fitted on a
    bounded sample, so memory is that of the N x `n_pcs` table and the graph."""
    import igraph as ig

    with h5py.File(features_path, "r") as h5:
        n = h5["features"].shape[0]
    z, _ = reduce_file(features_path, np.arange(n), min(n_pcs, n - 1), seed=seed)
    nn = nearest_neighbors(z, n_neighbors)
    src = np.repeat(np.arange(n, dtype=np.int64), n_neighbors)
    dst = nn.astype(np.int64).ravel()
    keep = (dst >= 0) & (dst != src)
    pairs = np.unique(np.minimum(src, dst)[keep] * n + np.maximum(src, dst)[keep])
    return ig.Graph(n=n, edges=np.column_stack([pairs // n, pairs % n]))


def leiden_k(features_path: str, k: int, seed: int = 0, max_iter: int = 25) -> np.ndarray:
    """Cluster labels with (as close as possible to) k clusters, by bisection on the resolution."""
    import leidenalg

    graph = knn_graph(features_path, seed=seed)
    lo, hi, best = 0.0, 4.0, None
    for _ in range(max_iter):
        res = (lo + hi) / 2
        part = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                        resolution_parameter=res, seed=seed)
        labels = np.asarray(part.membership)
        n = labels.max() + 1
        if best is None or abs(n - k) < abs(best[0] - k):
            best = (n, labels, res)
        if n == k:
            break
        lo, hi = (res, hi) if n < k else (lo, res)
    log.info("Leiden: %d clusters (asked for %d) at resolution %.4f", best[0], k, best[2])
    return best[1]


def histology_leiden(features_path: str, cells_path: str, k: int, out: str, seed: int = 0) -> None:
    """The rule niche_hist_leiden: Leiden labels of every cell of the slide, by cell_id.

    Parameters
    ----------
    features_path : str
        The slide's H&E features (extract_cell_features), rows in cells.parquet's order (checked).
    cells_path : str
        The slide's cells.parquet.
    k : int
        Number of clusters asked for; the resolution is bisected, so the nearest count found is kept.
    out : str
        clusters.parquet written: `cell_id`, `niche`.
    seed : int, default 0
        Seed of the PCA and of Leiden.
    """
    cells = pd.read_parquet(cells_path)
    check_feature_ids(features_path, cells)
    labels = leiden_k(features_path, k, seed)
    with atomic_path(out) as tmp:
        pd.DataFrame({CELL_ID: cells[CELL_ID], "niche": labels}).to_parquet(tmp, index=False)
