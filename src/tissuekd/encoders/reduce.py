"""Feature files read in chunks: statistics fitted on a bounded sample of rows, then z-score
and PCA applied chunk by chunk, so a 1,000,000 x 1,536 file (6 GB) never sits in memory whole.

A slide's reduced features (N x 64 float32: 256 MB at a million cells) are what the models
train on; only they are held whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np

log = logging.getLogger(__name__)

# rows per read: 50 MB of 1,536-d float32, and a few copies of it while transformed (at 65,536
# rows the chunk and its copies took ~1.2 GB, which grew with the slide up to that size)
CHUNK_ROWS = 8_192
FIT_SAMPLE = 50_000  # rows the z-score and PCA are fitted on (all of them when there are fewer)


def iter_chunks(dataset: h5py.Dataset, chunk: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows as float32) over the whole dataset, `chunk` rows at a time."""
    for start in range(0, dataset.shape[0], chunk):
        yield start, np.asarray(dataset[start : start + chunk], dtype=np.float32)


def sample_rows(rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most `n` of `rows`, sorted; all of them (as given) when there are no more than `n`."""
    rows = np.asarray(rows)
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def read_rows(dataset: h5py.Dataset, rows: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """The given (increasing) rows as float32, in one pass over the dataset's chunks."""
    rows = np.asarray(rows)
    out = np.empty((len(rows), dataset.shape[1]), dtype=np.float32)
    for start in range(0, dataset.shape[0], chunk):
        lo, hi = np.searchsorted(rows, [start, start + chunk])
        if hi > lo:
            out[lo:hi] = dataset[start : start + chunk][rows[lo:hi] - start]
    return out


@dataclass
class Reduction:
    """z-score, then (optionally) PCA to `components` rows, then one global scale: fitted on a
    sample, applied to any rows. PCA is not whitened (whitening inflates the noise components)."""

    mean: np.ndarray
    std: np.ndarray
    pca_mean: np.ndarray | None = None
    components: np.ndarray | None = None
    scale: float = 1.0

    @classmethod
    def fit(cls, sample: np.ndarray, max_dim: int | None, seed: int = 0) -> Reduction:
        mean, std = sample.mean(axis=0), sample.std(axis=0)
        red = cls(mean, np.maximum(std, 1e-6 * std.max() + 1e-12))
        if max_dim and sample.shape[1] > max_dim:
            from sklearn.decomposition import PCA

            pca = PCA(max_dim, random_state=seed).fit(red.zscore(sample))
            red.pca_mean, red.components = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
            red.scale = float(red.transform(sample).std())
        return red

    def zscore(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = self.zscore(x)
        if self.components is not None:
            z = (z - self.pca_mean) @ self.components.T / self.scale
        return z.astype(np.float32, copy=False)

    @property
    def width(self) -> int:
        return len(self.mean) if self.components is None else len(self.components)


def reduce_file(path: str, fit_rows: np.ndarray, max_dim: int | None, *, key: str = "features",
                sample: int = FIT_SAMPLE, seed: int = 0, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, Reduction]:
    """Every row of `path[key]` reduced with statistics from (a sample of) `fit_rows` only.

    For the student `fit_rows` are its training cells, so no statistic of a test cell reaches
    training. Peak memory: the sample, one chunk and the reduced output.

    Parameters
    ----------
    path : str
        HDF5 feature file.
    fit_rows : np.ndarray
        Increasing row indices the statistics are fitted on.
    max_dim : int or None
        PCA components kept; None (or no more columns than that): z-score only.
    key : str, default "features"
        The dataset reduced.
    sample : int, default FIT_SAMPLE
        At most this many of `fit_rows` (drawn at random) are fitted on.
    seed : int, default 0
        Seed of that draw and of the PCA.
    chunk : int, default CHUNK_ROWS
        Rows per read.

    Returns
    -------
    reduced : np.ndarray
        (rows, width) float32, every row of the dataset.
    reduction : Reduction
        The fitted statistics.
    """
    with h5py.File(path, "r") as h5:
        data = h5[key]
        fit_on = sample_rows(fit_rows, sample, seed)
        red = Reduction.fit(read_rows(data, fit_on, chunk), max_dim, seed)
        out = np.empty((data.shape[0], red.width), dtype=np.float32)
        for start, x in iter_chunks(data, chunk):
            out[start : start + len(x)] = red.transform(x)
    log.info("%s: %d x %d features -> %d (statistics from %d of %d fitting rows)", path, data.shape[0],
             data.shape[1], red.width, len(fit_on), len(fit_rows))
    return out, red
