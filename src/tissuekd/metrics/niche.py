"""Niche agreement with the teacher, on test cells: ARI, NMI (scikit-learn), composition
JSD (scipy), and a linear-SVM probe to pathology annotations (macro-F1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC


def hungarian_match(labels: np.ndarray, reference: np.ndarray) -> dict:
    """Map each cluster of `labels` to the reference niche it overlaps most, one-to-one."""
    table = pd.crosstab(labels, reference)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    return {table.index[r]: table.columns[c] for r, c in zip(rows, cols)}


def composition_jsd(labels: np.ndarray, reference: np.ndarray, cell_types: np.ndarray,
                    matching: dict | None = None) -> float:
    """Mean Jensen-Shannon divergence (base 2, in [0, 1]) between the cell-type composition of
    each niche and of its matched reference niche. Identity matching when `matching` is None
    (a student shares the teacher's niche indices)."""
    types = np.unique(cell_types)

    def composition(assign, niche):
        counts = pd.Series(cell_types[assign == niche]).value_counts()
        return counts.reindex(types, fill_value=0).to_numpy(float)

    if matching is None:
        matching = {n: n for n in np.unique(labels)}
    values = []
    for niche, ref in matching.items():
        p, q = composition(labels, niche), composition(reference, ref)
        if p.sum() and q.sum():
            values.append(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)
    return float(np.mean(values)) if values else float("nan")


def probe_f1(labels: np.ndarray, annotation: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Macro-F1 of a linear SVM from one-hot niche assignments to the annotation, cross-validated."""
    onehot = pd.get_dummies(pd.Series(labels).astype(str)).to_numpy(float)
    counts = pd.Series(annotation).value_counts()
    folds = int(min(folds, counts.min()))
    if folds < 2 or len(counts) < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LinearSVC(C=1.0, random_state=seed), onehot, annotation, cv=cv)
    return float(f1_score(annotation, pred, average="macro"))


def niche_metrics(method: str, labels: np.ndarray, teacher: np.ndarray, cell_types: np.ndarray,
                  annotation: np.ndarray | None, matched: bool) -> dict:
    """One row of the metrics table; `matched`: Hungarian-match clusters to the teacher's niches."""
    matching = hungarian_match(labels, teacher) if matched else None
    return {
        "method": method,
        "ARI": adjusted_rand_score(teacher, labels),
        "NMI": normalized_mutual_info_score(teacher, labels),
        "JSD": composition_jsd(labels, teacher, cell_types, matching),
        "probe_F1": probe_f1(labels, annotation) if annotation is not None else float("nan"),
        "n_cells": int(len(labels)),
        "n_niches": int(len(np.unique(labels))),
    }
