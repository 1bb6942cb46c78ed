"""C-index per fold (scikit-survival), and Kaplan-Meier curves of predicted risk groups with a
log-rank test (scikit-survival's estimator and `compare_survival`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sksurv.compare import compare_survival
from sksurv.metrics import concordance_index_censored
from sksurv.nonparametric import kaplan_meier_estimator


def c_index(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    return float(concordance_index_censored(np.asarray(event, bool), np.asarray(time, float), np.asarray(risk))[0])


def fold_metrics(predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method and fold (c_index, n_patients, n_events), plus a `pooled` row: the
    C-index of all out-of-fold predictions together."""
    rows = []
    for method, pred in predictions.items():
        parts = [(str(fold), part) for fold, part in pred.groupby("fold")] + [("pooled", pred)]
        for fold, part in parts:
            rows.append({"method": method, "fold": fold, "c_index": c_index(part["event"], part["time"], part["risk"]),
                         "n_patients": len(part), "n_events": int(part["event"].sum())})
    return pd.DataFrame(rows)


def risk_groups(pred: pd.DataFrame, thresholds: dict | float) -> np.ndarray:
    """High (1) / low (0) risk: above the fold's threshold (the median training-patient risk
    of that fold's model, so the split uses no test outcome) or a single threshold."""
    if isinstance(thresholds, dict):
        cut = pred["fold"].map(thresholds).to_numpy()
    else:
        cut = thresholds
    return (pred["risk"].to_numpy() > cut).astype(int)


def log_rank(pred: pd.DataFrame, groups: np.ndarray) -> tuple[float, float]:
    """(chi-square, p-value) of the log-rank test between the risk groups."""
    if len(np.unique(groups)) < 2:
        return float("nan"), float("nan")
    y = np.array(list(zip(pred["event"].astype(bool), pred["time"].astype(float))),
                 dtype=[("event", bool), ("time", float)])
    chisq, pvalue = compare_survival(y, groups)
    return float(chisq), float(pvalue)


def plot_km(pred: pd.DataFrame, groups: np.ndarray, title: str, out: str, endpoint: str = "OS") -> float:
    """Kaplan-Meier curves of the two groups with the log-rank p-value; returns the p-value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, pvalue = log_rank(pred, groups)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for group, label, colour in ((0, "low risk", "tab:blue"), (1, "high risk", "tab:red")):
        part = pred[groups == group]
        if len(part) == 0:
            continue
        t, s = kaplan_meier_estimator(part["event"].astype(bool).to_numpy(), part["time"].astype(float).to_numpy())
        ax.step(np.r_[0, t], np.r_[1, s], where="post", color=colour, label=f"{label} (n={len(part)})")
    ax.set_xlabel(f"{endpoint}.time (days)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nlog-rank p = {pvalue:.2g}", fontsize=10)
    ax.legend(loc="lower left", frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pvalue
