"""A cohort as the survival fits read it: patients with their folds, RNA, and each patient's
bag of patch features, held in memory (tests, small cohorts) or read from the feature files
when a step needs them (`FileBags`: a cohort of 1,000 patients x 10,000 patches never sits in
memory whole), with streaming per-patient moments for each fold's feature scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tissuekd.encoders.reduce import iter_chunks
from tissuekd.errors import InputError

BAG_CACHE_BYTES = 1 << 30  # a cohort's bags up to this size stay in memory (FileBags); the fit rules ask 4 GB


class MemoryBags(list):
    """Bags held in memory (tests, small cohorts): one (patches, dim) tensor per patient."""

    @property
    def dim(self) -> int:
        return int(self[0].shape[1])

    def count(self, i: int) -> int:
        return len(self[i])

    def rows(self, i: int, idx: np.ndarray | None = None) -> torch.Tensor:
        """A new tensor (callers scale it in place), as FileBags.rows."""
        return self[i].clone() if idx is None else self[i][idx]

    def moments(self, i: int) -> Moments:
        return Moments.of(self[i].double().numpy())


def finite(features: np.ndarray, path: str) -> np.ndarray:
    """Features as read, refused with their file where one is NaN or infinite (an extractor's
    fp16 overflow, say): they would turn the fit's loss to NaN, naming no file."""
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features).all(axis=1)).sum())
        raise InputError(path, f"`features` holds NaN or infinite values ({bad} of the {len(features)} rows read): "
                               "re-extract the slide's features")
    return features


class FileBags:
    """Each patient's bag read from their feature files (`;`-joined paths) when a step needs
    it, so a cohort of 1,000 patients x 10,000 patches never sits in memory; a training step
    reads only the sampled rows. A cohort whose bags fit in `cache_bytes` together is kept in
    memory once read (the demo's fits had opened an h5 file per patient and step: a fifth of
    their time); a larger one streams every read. Keeping only the bags that fit was measured
    and dropped: at 1,000 patients x 2,000 patches it was no faster and held 1.4 GB more."""

    def __init__(self, features: Sequence[str], cache_bytes: int = BAG_CACHE_BYTES):
        self.files = [paths.split(";") for paths in features]
        self.counts = []
        for paths in tqdm(self.files, desc="bags", unit="patient", mininterval=10):
            sizes = []
            for path in paths:
                with h5py.File(path, "r") as h5:
                    sizes.append(h5["features"].shape[0])
                    if sizes[-1]:  # a slide without tissue is stored as (0, 0)
                        self.dim, self.dtype = int(h5["features"].shape[1]), h5["features"].dtype
            self.counts.append(np.cumsum([0, *sizes]))
        self._moments: dict[int, Moments] = {}
        self._cache: dict[int, np.ndarray] = {}
        patches = sum(int(c[-1]) for c in self.counts)
        self.cached = patches == 0 or patches * self.dim * self.dtype.itemsize <= cache_bytes

    def __len__(self) -> int:
        return len(self.files)

    def count(self, i: int) -> int:
        return int(self.counts[i][-1])

    def rows(self, i: int, idx: np.ndarray | None = None) -> torch.Tensor:
        """Rows `idx` (increasing; all when None) of patient `i`'s bag: a new float32 tensor."""
        if not self.cached:
            return torch.from_numpy(self._read(i, idx).astype(np.float32, copy=False))  # freshly read: no copy
        if i not in self._cache:
            self._cache[i] = self._read(i, None)  # in the files' dtype (fp16 features: half the memory)
        bag = self._cache[i]
        # the kept bag itself must be copied; a fancy-indexed selection already is one
        return torch.from_numpy((bag if idx is None else bag[idx]).astype(np.float32, copy=idx is None))

    def _read(self, i: int, idx: np.ndarray | None) -> np.ndarray:
        """Rows `idx` of patient `i`'s bag (all when None), in the files' dtype."""
        parts, bounds = [], self.counts[i]
        for f, path in enumerate(self.files[i]):
            own = slice(None) if idx is None else idx[(idx >= bounds[f]) & (idx < bounds[f + 1])] - bounds[f]
            if bounds[f + 1] == bounds[f] or (idx is not None and len(own) == 0):
                continue  # nothing wanted there (or a slide without tissue, stored as (0, 0))
            with h5py.File(path, "r") as h5:
                parts.append(finite(h5["features"][own], path))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), self.dtype)

    def moments(self, i: int) -> Moments:
        """Count, mean and sum of squared deviations of patient `i`'s patches, in one chunked
        pass (cached: each fold's scaling combines its training patients')."""
        if i not in self._moments:
            total = Moments.empty(self.dim)
            for path in self.files[i]:
                with h5py.File(path, "r") as h5:
                    for _, chunk in iter_chunks(h5["features"]):
                        total = total.merge(Moments.of(finite(chunk, path).astype(np.float64)))
            self._moments[i] = total
        return self._moments[i]


@dataclass
class Moments:
    """Streaming mean/variance (Chan et al.'s pairwise merge, stable in float64)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta**2 * self.n * other.n / n)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n - 1, 1))  # unbiased, as torch.std


@dataclass
class CohortData:
    patients: pd.DataFrame  # patient, time, event, fold
    bags: MemoryBags | FileBags | None = None
    rna: np.ndarray | None = None  # patients x genes, raw
    genes: list[str] = field(default_factory=list)
    gene_sets: dict[str, list[int]] | None = None

    def __post_init__(self):
        if isinstance(self.bags, list) and not isinstance(self.bags, MemoryBags):
            self.bags = MemoryBags(self.bags)

    @property
    def dim(self) -> int:
        return self.bags.dim
