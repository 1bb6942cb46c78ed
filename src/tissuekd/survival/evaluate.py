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


BOOTSTRAPS = 1000  # resamples of patients for the 95% intervals (fixed a priori)


def bootstrap_c_index(predictions: dict[str, pd.DataFrame], reference: str = "pathology",
                      n_boot: int = BOOTSTRAPS, seed: int = 0) -> pd.DataFrame:
    """95% percentile intervals of each method's C-index over all its predictions (pooled
    out-of-fold, or an external cohort), from `n_boot` resamples of patients with replacement,
    and of the paired difference method - `reference` on the same resamples (the methods score
    the same patients, so their errors are correlated and the paired interval is the honest one)."""
    methods = list(predictions)
    merged = pd.concat({m: predictions[m].set_index("patient")[["event", "time", "risk"]] for m in methods}, axis=1)
    first = methods[0]
    event, time = merged[(first, "event")].to_numpy(bool), merged[(first, "time")].to_numpy(float)
    risks = {m: merged[(m, "risk")].to_numpy(float) for m in methods}
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in methods}
    for _ in range(n_boot):
        idx = rng.integers(0, len(event), len(event))
        if not event[idx].any():
            continue  # no comparable pair: C undefined for this resample
        for m in methods:
            draws[m].append(c_index(event[idx], time[idx], risks[m][idx]))
    if not draws[first]:  # a cohort without events: no interval (the point C-index is undefined too)
        return pd.DataFrame({"method": methods, "c_index_low": np.nan, "c_index_high": np.nan})
    rows = []
    for m in methods:
        values = np.array(draws[m])
        row = {"method": m, "c_index_low": np.quantile(values, 0.025), "c_index_high": np.quantile(values, 0.975)}
        if reference in draws and m != reference:
            diff = values - np.array(draws[reference])
            row.update({f"minus_{reference}": c_index(event, time, risks[m]) - c_index(event, time, risks[reference]),
                        f"minus_{reference}_low": np.quantile(diff, 0.025),
                        f"minus_{reference}_high": np.quantile(diff, 0.975)})
        rows.append(row)
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
    """Kaplan-Meier curves of the two groups with the log-rank p-value; returns the p-value.

    Parameters
    ----------
    pred : pandas.DataFrame
        One row per patient: `time` (days in TCGA-CDR tables), `event` (1 event, 0 censored).
    groups : np.ndarray
        (patients,) 0 low risk, 1 high risk (risk_groups).
    title : str
        First line of the plot's title.
    out : str
        Image written (PNG).
    endpoint : str, default "OS"
        The survival endpoint, for the time axis' label.

    Returns
    -------
    float
        The log-rank p-value (NaN when only one group has patients).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, pvalue = log_rank(pred, groups)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for group, label, colour in ((0, "low risk", "tab:blue"), (1, "high risk", "tab:red")):
        part = pred[groups == group]
        if len(part) == 0:
            continue
        event, time = part["event"].astype(bool).to_numpy(), part["time"].astype(float).to_numpy()
        t, s = kaplan_meier_estimator(event, time)
        ax.step(np.r_[0, t], np.r_[1, s], where="post", color=colour, label=f"{label} (n={len(part)})")
        censored = time[~event]
        # a tick where each censored patient leaves, on the curve (t holds every time, censored ones too)
        ax.plot(censored, np.r_[1, s][np.searchsorted(t, censored, side="right")], "|", color=colour, ms=7)
    ax.set_xlabel(f"{endpoint}.time (days)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nlog-rank p = {pvalue:.2g}", fontsize=10)
    ax.plot([], [], "|", color="grey", ms=7, label="censored")
    ax.legend(loc="lower left", frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pvalue
