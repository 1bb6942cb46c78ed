"""The protocol's gene lists and metrics: Pearson r per gene (equal to scipy.stats.pearsonr),
both ways the field reports it, and how well predicted gene-gene correlations match the true ones."""

from __future__ import annotations

import numpy as np
import pandas as pd

N_LIST_GENES = 50  # HEG and HVG sizes (the HEST benchmark's 50)


def gene_lists(train: np.ndarray, genes: np.ndarray, markers: list[str], n: int = N_LIST_GENES) -> dict[str, list[str]]:
    """HEG (top n by mean), HVG (top n by variance) of the normalised training expression, and
    the configured markers; chosen on training spots only. Ties break by gene order."""
    order_mean = np.argsort(-train.mean(0), kind="stable")[:n]
    order_var = np.argsort(-train.var(0), kind="stable")[:n]
    lists = {"HEG": [str(g) for g in genes[order_mean]], "HVG": [str(g) for g in genes[order_var]]}
    if markers:
        lists["markers"] = list(markers)
    return lists


def pearson_per_gene(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson r of each column; NaN where either side is constant (as scipy.stats.pearsonr)."""
    t = true - true.mean(0)
    p = pred - pred.mean(0)
    denom = np.sqrt((t**2).sum(0) * (p**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (t * p).sum(0) / denom
    r[denom == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def gene_gene_agreement(true: np.ndarray, pred: np.ndarray) -> float:
    """Pearson r between the upper triangles of the true and the predicted gene-gene correlation
    matrices (over spots); genes constant on either side are left out."""
    ok = (true.std(0) > 0) & (pred.std(0) > 0)
    if ok.sum() < 3:
        return float("nan")
    upper = np.triu_indices(int(ok.sum()), 1)
    a = np.corrcoef(true[:, ok], rowvar=False)[upper]
    b = np.corrcoef(pred[:, ok], rowvar=False)[upper]
    return float(np.corrcoef(a, b)[0, 1])


def score_fold(true: pd.DataFrame, preds: dict[str, np.ndarray], samples: np.ndarray, lists: dict[str, list[str]]
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-gene r and per-list summaries of one fold's test spots, per test sample and pooled.

    `true` holds the test spots' normalised expression (columns: genes); `preds[name]` the
    predictions of list `name`'s genes, in its order (ridge fits each list on its own).
    Returns (per_gene: scope, gene_list, gene, pcc; summary: scope, gene_list, pcc_mean, gene_gene_r, n_spots)."""
    per_gene, summary = [], []
    scopes = [(s, samples == s) for s in np.unique(samples)] + [("pooled", np.ones(len(samples), bool))]
    for scope, rows in scopes:
        for name, genes in lists.items():
            t, p = true[genes].to_numpy()[rows], preds[name][rows]
            r = pearson_per_gene(t, p)
            per_gene.append(pd.DataFrame({"scope": scope, "gene_list": name, "gene": genes, "pcc": r}))
            mean = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
            summary.append({"scope": scope, "gene_list": name, "pcc_mean": mean,
                            "gene_gene_r": gene_gene_agreement(t, p), "n_spots": int(rows.sum())})
    return pd.concat(per_gene, ignore_index=True), pd.DataFrame(summary)


def dataset_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per method and gene list: mean ± SD over folds of the PCC averaged per test sample
    (CMRCNet's way) and on the pooled test split (the HEST benchmark's way), and of gene-gene r."""
    per_sample = (summaries[summaries["scope"] != "pooled"]
                  .groupby(["method", "gene_list", "fold"])[["pcc_mean", "gene_gene_r"]].mean())
    pooled = summaries[summaries["scope"] == "pooled"].set_index(["method", "gene_list", "fold"])
    rows = []
    for (method, gene_list), part in per_sample.groupby(level=[0, 1]):
        pool = pooled.loc[(method, gene_list)]
        rows.append({"method": method, "gene_list": gene_list, "n_folds": len(part),
                     "pcc_per_sample_mean": part["pcc_mean"].mean(), "pcc_per_sample_sd": part["pcc_mean"].std(),
                     "pcc_pooled_mean": pool["pcc_mean"].mean(), "pcc_pooled_sd": pool["pcc_mean"].std(),
                     "gene_gene_r_mean": part["gene_gene_r"].mean()})
    return pd.DataFrame(rows)
