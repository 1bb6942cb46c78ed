"""Evaluation of one slide and K on test-strip cells — agreement with the teacher: ARI, NMI
(scikit-learn), composition JSD (scipy), a linear-SVM probe to pathology annotations
(macro-F1) — and the side-by-side niche maps."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC

from tissuekd.io.atomic import atomic_path

log = logging.getLogger(__name__)

# method name -> whether its cluster ids must be matched to the teacher's niches
METHODS = {"student": False, "hist_nolan": True, "hist_leiden": True}


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


def _assignments(path: str, cells: pd.DataFrame) -> np.ndarray:
    frame = pd.read_parquet(path, columns=["cell_id", "niche"]).set_index("cell_id")
    return frame.loc[cells["cell_id"], "niche"].to_numpy()


def evaluate_slide(cells_path: str, split_path: str, teacher: str, predictions: dict[str, str], out: str, *,
                   slide: str, tissue: str, k: int, encoder: str) -> pd.DataFrame:
    cells = pd.read_parquet(cells_path)
    test = pd.read_parquet(split_path)["role"].to_numpy() == "test"
    reference = _assignments(teacher, cells)[test]
    types = cells["cell_type"].to_numpy()[test]
    annotation = None
    if "pathology" in cells and (cells["pathology"] != "unannotated").any():
        annotation = cells["pathology"].to_numpy()[test]
    rows = [niche_metrics(m, _assignments(predictions[m], cells)[test], reference, types, annotation, METHODS[m])
            for m in predictions]
    teacher_row = niche_metrics("teacher", reference, reference, types, annotation, False)
    table = pd.DataFrame([teacher_row, *rows]).assign(slide=slide, tissue=tissue, k=k, encoder=encoder)
    table = table[["slide", "tissue", "k", "encoder", "method", "ARI", "NMI", "JSD", "probe_F1", "n_cells", "n_niches"]]
    log.info("\n%s", table.to_string(index=False))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return table


def _matched_colours(labels: np.ndarray, reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Relabel clusters to their Hungarian-matched teacher niche (matched on test cells);
    clusters left unmatched get fresh ids after the teacher's."""
    match = hungarian_match(labels[test], reference[test])
    fresh = iter(range(int(reference.max()) + 1, 10**6))
    for cluster in np.unique(labels):
        if cluster not in match:
            match[cluster] = next(fresh)
    return np.array([match[v] for v in labels], dtype=int)


def plot_maps(cells_path: str, split_path: str, teacher: str, predictions: dict[str, str], out: str, *,
              title: str) -> None:
    """Teacher, student and baselines side by side; matched niches share a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = pd.read_parquet(cells_path)
    role = pd.read_parquet(split_path)["role"].to_numpy()
    reference = _assignments(teacher, cells)
    panels = {"teacher (transcriptomics)": reference}
    for method, path in predictions.items():
        labels = _assignments(path, cells)
        if METHODS[method]:
            labels = _matched_colours(labels, reference, role == "test")
        panels[method.replace("_", " ")] = labels
    # tab20's strong colours first, then its pale partners: K=10 maps use only strong ones
    palette = np.array(plt.get_cmap("tab20").colors)[np.r_[0:20:2, 1:20:2]]
    y = cells["y_um"].to_numpy()
    test_y = y[role == "test"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), constrained_layout=True)
    for ax, (name, labels) in zip(axes, panels.items()):
        ax.scatter(cells["x_um"], y, c=palette[np.asarray(labels) % 20], s=1.2, linewidths=0, rasterized=True)
        for edge in (test_y.min(), test_y.max()):
            ax.axhline(edge, color="black", lw=0.8, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} (test strip between dashed lines)", fontsize=11)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
