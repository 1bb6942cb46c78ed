"""The protocol's gene lists and metrics: Pearson r per gene (equal to scipy.stats.pearsonr),
both ways the field reports it, and how well predicted gene-gene correlations match the true ones."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tissuekd.io.atomic import atomic_path

N_LIST_GENES = 50  # HEG and HVG sizes (the HEST benchmark's 50)


def gene_lists(mean: np.ndarray, var: np.ndarray, genes: np.ndarray, markers: list[str], n: int = N_LIST_GENES
               ) -> dict[str, list[str]]:
    """HEG (top n by mean), HVG (top n by variance) of the normalised training expression (per-gene
    `mean` and `var` over training spots), and the configured markers. Ties break by gene order."""
    order_mean = np.argsort(-mean, kind="stable")[:n]
    order_var = np.argsort(-var, kind="stable")[:n]
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
    pooled = summaries[summaries["scope"] == "pooled"].set_index(["method", "gene_list", "fold"]).sort_index()
    rows = []
    for (method, gene_list), part in per_sample.groupby(level=[0, 1]):
        pool = pooled.loc[(method, gene_list)]
        rows.append({"method": method, "gene_list": gene_list, "n_folds": len(part),
                     "pcc_per_sample_mean": part["pcc_mean"].mean(), "pcc_per_sample_sd": part["pcc_mean"].std(),
                     "pcc_pooled_mean": pool["pcc_mean"].mean(), "pcc_pooled_sd": pool["pcc_mean"].std(),
                     "gene_gene_r_mean": part["gene_gene_r"].mean(), "gene_gene_r_sd": part["gene_gene_r"].std()})
    return pd.DataFrame(rows)


def plot_maps(predictions: list[str], spots: dict[str, str], expressions: dict[str, str], method: str, out: str,
              gene_list: str = "HVG", n_genes: int = 3, max_samples: int = 4) -> None:
    """True and predicted expression side by side on the tissue, for the first `n_genes` genes of
    each fold's `gene_list` (in the list's own order, chosen on training spots), one row per
    test sample (at most `max_samples`)."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for path in predictions:
        pred = pd.read_parquet(path)
        genes = [c.split(":", 1)[1] for c in pred.columns if c.startswith(f"{gene_list}:")][:n_genes]
        for sample, part in pred.groupby("sample", sort=True):
            rows.append((sample, part, genes))
    rows = rows[:max_samples]
    fig, axes = plt.subplots(len(rows), 2 * n_genes, figsize=(2.6 * 2 * n_genes, 2.6 * len(rows)), squeeze=False)
    for r, (sample, part, genes) in enumerate(rows):
        xy = pd.read_parquet(spots[sample]).set_index("barcode").loc[part["barcode"], ["x", "y"]].to_numpy()
        true = ad.read_h5ad(expressions[sample])[part["barcode"].to_numpy(), genes].X
        true = true.toarray() if hasattr(true, "toarray") else np.asarray(true)
        for g, gene in enumerate(genes):
            pred = part[f"{gene_list}:{gene}"].to_numpy()
            r_value = pearson_per_gene(true[:, [g]], pred[:, None])[0]
            for c, (values, label) in enumerate(((true[:, g], "measured"), (pred, f"{method}, r = {r_value:.2f}"))):
                ax = axes[r, 2 * g + c]
                points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=6, cmap="viridis")
                bar = fig.colorbar(points, ax=ax, fraction=0.046, pad=0.02)
                bar.ax.tick_params(labelsize=6)
                bar.set_label("log1p expression (own scale)", fontsize=6)  # the PNG says what the caption does
                ax.set_title(f"{sample} {gene}\n{label}", fontsize=7)
                ax.set_aspect("equal")
                ax.invert_yaxis()
                ax.axis("off")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
