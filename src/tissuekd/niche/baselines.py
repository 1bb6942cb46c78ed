"""The niche study's comparison methods on H&E features. Histology NOLAN is the teacher's own
method (tissuekd.niche.train.fit_nolan) fitted on H&E features, so only Histology Leiden lives
here: Leiden clustering (leidenalg on an igraph kNN graph) of H&E features,
with the resolution searched until it yields the requested number of clusters."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def knn_graph(features: np.ndarray, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0):
    """Undirected kNN graph on standardised, PCA-reduced features (the scanpy recipe)."""
    import igraph as ig
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    z = PCA(min(n_pcs, z.shape[1], z.shape[0] - 1), random_state=seed).fit_transform(z)
    _, nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(z).kneighbors(z)
    edges = {(min(a, b), max(a, b)) for a, row in enumerate(nn) for b in row[1:]}
    return ig.Graph(n=len(z), edges=sorted(edges))


def leiden_k(features: np.ndarray, k: int, seed: int = 0, max_iter: int = 25) -> np.ndarray:
    """Cluster labels with (as close as possible to) k clusters, by bisection on the resolution."""
    import leidenalg

    graph = knn_graph(features, seed=seed)
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
