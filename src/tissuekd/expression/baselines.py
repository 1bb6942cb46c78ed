"""The comparison methods, on the same features, folds and genes as CMRCNet.

- ridge: the HEST-benchmark's regression (mahmoodlab/HEST, hest/bench): StandardScaler -> PCA
  (256 components, fitted on the training spots) -> Ridge with alpha = 100 / (d · n_genes), d the
  PCA width, no intercept, solver lsqr; one fit per gene list, as the benchmark does.
- knn: the mean expression of the k training spots nearest by cosine on the frozen features
  (standardised with the training spots' statistics).
- random: the mean of k training spots drawn at random per test spot: the floor (a constant
  prediction has no defined correlation).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tissuekd.expression.retrieval import mean_of_neighbours, retrieve

PCA_DIM = 256


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """HEST-benchmark ridge on one gene list: (test spots, genes)."""
    dim = min(PCA_DIM, *train_x.shape)
    reduce = make_pipeline(StandardScaler(), PCA(dim, random_state=seed)).fit(train_x)
    z_train, z_test = reduce.transform(train_x), reduce.transform(test_x)
    alpha = 100 / (z_train.shape[1] * train_y.shape[1])
    model = Ridge(alpha=alpha, fit_intercept=False, solver="lsqr", max_iter=1000, random_state=seed)
    return model.fit(z_train, train_y).predict(z_test)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, index: str = "auto",
                nprobe: int = 32) -> np.ndarray:
    return mean_of_neighbours(retrieve(torch.from_numpy(test_x), torch.from_numpy(train_x), k, index, nprobe), train_y)


def random_predict(train_y: np.ndarray, n_test: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(train_y), (n_test, min(k, len(train_y))))
    return mean_of_neighbours(index, train_y)
