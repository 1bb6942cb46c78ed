"""The survival benchmark: every fold's C-index, per cohort (mean ± SD over folds, and the
pooled out-of-fold C-index), across cohorts, and external validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from tissuekd.io.atomic import atomic_path
from tissuekd.report.summary import mean_sd, write_html

log = logging.getLogger(__name__)

KEYS = ["cohort", "evaluated_on", "encoder", "method"]
INTERVALS = ["c_index_low", "c_index_high", "minus_pathology", "minus_pathology_low", "minus_pathology_high"]


def collect(paths: list[str], methods: Sequence[str] = ()) -> pd.DataFrame:
    """Every metrics table, one row per cohort, encoder, method and fold; methods in the order of
    `methods` (the rule's script passes survival/methods.py's table), any other after them by name."""
    table = pd.concat([pd.read_csv(p, sep="\t", dtype={"fold": str}) for p in paths], ignore_index=True)
    table["method"] = pd.Categorical(table["method"], [*methods, *sorted(set(table["method"]) - set(methods))])
    return table.sort_values(KEYS + ["fold"]).reset_index(drop=True)


def by_cohort(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per cohort (trained on / evaluated on), encoder and method: C-index mean ± SD over
    folds, the pooled out-of-fold C-index (one number over all patients; steadier when folds are
    small), or the single external C-index, and the log-rank p of the student's risk groups."""
    per_fold = folds[~folds["fold"].isin(["pooled", "all"])]
    grouped = per_fold.groupby(KEYS, observed=True)
    table = grouped["c_index"].agg(["mean", "std", "size"]).rename(
        columns={"mean": "c_index_mean", "std": "c_index_sd", "size": "n_folds"})
    whole = folds[folds["fold"].isin(["pooled", "all"])].set_index(KEYS)
    single = whole[["c_index", *[c for c in INTERVALS if c in whole]]].rename(columns={"c_index": "c_index_pooled"})
    table = table.join(single, how="outer")
    table["km_logrank_p"] = folds.groupby(KEYS, observed=True)["km_logrank_p"].first()
    table["validation"] = ["cross-validation" if c == e else "external" for c, e, *_ in table.index]
    table["n_folds"] = table["n_folds"].astype("Int64")  # a count (blank for external rows), not 5.0000
    return table.reset_index()


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The per-cohort table with C-index as 'mean ± SD' text."""
    out = table[KEYS + ["validation"]].copy()
    out["C-index (folds)"] = [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else "–"
                              for m, s in zip(table["c_index_mean"], table["c_index_sd"])]
    t = table.reindex(columns=list(dict.fromkeys([*table.columns, *INTERVALS])))  # older tables: no intervals
    out["C-index (pooled / external) [95% CI]"] = [
        f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else f"{v:.3f}"
        for v, lo, hi in zip(t["c_index_pooled"], t["c_index_low"], t["c_index_high"])]
    out["minus pathology-only [95% CI]"] = [
        f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if pd.notna(d) else ""
        for d, lo, hi in zip(t["minus_pathology"], t["minus_pathology_low"], t["minus_pathology_high"])]
    out["student log-rank p"] = table["km_logrank_p"].map(lambda v: f"{v:.2g}" if pd.notna(v) else "")
    return out


def across_cohorts(table: pd.DataFrame) -> pd.DataFrame:
    """Cross-validated cohorts only: mean ± SD over cohorts of each cohort's mean C-index."""
    cv = table[table["validation"] == "cross-validation"]
    grouped = cv.groupby(["encoder", "method"], observed=True)
    return pd.DataFrame({
        "n_cohorts": grouped.size(),
        "C-index (mean of cohort means)": grouped["c_index_mean"].agg(mean_sd),
        "pooled C-index": grouped["c_index_pooled"].agg(mean_sd),
    }).reset_index()


def write_survival_benchmark(paths: list[str], out: dict, methods: Sequence[str] = ()) -> None:
    """The survival benchmark's tables; `methods`: their method order (see collect)."""
    folds = collect(paths, methods)
    cohorts = by_cohort(folds)
    overall = across_cohorts(cohorts)
    log.info("survival benchmark over %d metrics files\n%s", len(paths), readable(cohorts).to_string(index=False))
    for key, frame in (("folds", folds), ("by_cohort", cohorts), ("overall", overall)):
        with atomic_path(out[key]) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    write_html([("Survival study: C-index per cohort", readable(cohorts), "survival-cohorts"),
                ("Across cohorts (cross-validated)", overall, "survival-overall")], out["html"])
