"""How far the expression demo lets a method go: each test spot predicted by the mean expression
of the k training spots nearest in the generator's truth (compartment shares and inflammation
under the spot; tissuekd.demo.expression), scored as the workflow scores its methods (HVG list
chosen on the training patients, Pearson r per gene per test sample, mean over
leave-one-patient-out folds). What stays below it is the noise of the counts; what a method
reaches between its score and this is what the image features and the method left out.

    python -m tissuekd.bench.expression_ceiling [--samples config/expression_samples.tsv] [--results results]

Needs the demo's prepared samples (results/expression/samples/) and their truth files; samples
without truth (pseudo-spots, your own data) are left out with their dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from tissuekd.errors import InputError
from tissuekd.expression.evaluate import gene_lists, pearson_per_gene
from tissuekd.expression.steps import common_genes, dense, gene_moments


def truth_path(row: pd.Series) -> Path | None:
    """Where the demo wrote a sample's truth: `truth/<sample>.parquet` beside a HEST release's
    `st/`, `truth.parquet` beside a Space Ranger `outs/`; None for other samples."""
    if row["format"] == "hest" and isinstance(row.get("st"), str):
        path = Path(row["st"]).parent.parent / "truth" / f"{row['sample']}.parquet"
    elif row["format"] == "visium" and isinstance(row.get("outs"), str):
        path = Path(row["outs"]).parent / "truth.parquet"
    else:
        return None
    return path if path.exists() else None


def fold_ceiling(train: list[ad.AnnData], test: ad.AnnData, truths: dict[str, pd.DataFrame], k: int) -> float:
    """Mean HVG r on one test sample of the k nearest training spots in truth space."""
    names = [a.uns["sample"] for a in train]
    genes = common_genes(train, names)
    hvg = gene_lists(*gene_moments(train, genes), np.array(genes), [])["HVG"]
    t_train = np.vstack([truths[a.uns["sample"]].loc[a.obs_names].to_numpy() for a in train])
    t_test = truths[test.uns["sample"]].loc[test.obs_names].to_numpy()
    nearest = NearestNeighbors(n_neighbors=min(k, len(t_train))).fit(t_train).kneighbors(t_test, return_distance=False)
    predicted = dense(train, hvg, names)[nearest].mean(1)
    return float(np.nanmean(pearson_per_gene(dense([test], hvg, [test.uns["sample"]]), predicted)))


def ceilings(sheet: pd.DataFrame, results: Path, k: int = 50) -> pd.Series:
    """Per dataset whose samples all carry truth: the mean over leave-one-patient-out folds."""
    out = {}
    for dataset, rows in sheet.groupby("dataset"):
        paths = {row["sample"]: truth_path(row) for _, row in rows.iterrows()}
        if None in paths.values() or rows["patient"].nunique() < 2:
            continue
        truths = {s: pd.read_parquet(p).set_index("barcode") for s, p in paths.items()}
        adatas = {}
        for s in rows["sample"]:
            path = results / "expression" / "samples" / s / "expression.h5ad"
            if not path.exists():
                raise InputError(path, "not prepared yet: run the expression study first")
            adatas[s] = ad.read_h5ad(path)
            adatas[s].uns["sample"] = s
        folds = []
        for patient in rows["patient"].unique():
            own = rows["patient"] == patient
            train = [adatas[s] for s in rows.loc[~own, "sample"]]
            folds.append(np.mean([fold_ceiling(train, adatas[s], truths, k) for s in rows.loc[own, "sample"]]))
        out[dataset] = float(np.mean(folds))
    return pd.Series(out, name="truth_retrieval", dtype=float)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=Path("config/expression_samples.tsv"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args(argv)
    table = ceilings(pd.read_csv(args.samples, sep="\t"), args.results, args.k).to_frame()
    if table.empty:
        raise InputError(args.samples, "no dataset whose samples all carry the demo's truth files")
    scores = args.results / "benchmark" / "expression_by_dataset.tsv"
    if scores.exists():
        hvg = pd.read_csv(scores, sep="\t").query("gene_list == 'HVG'")
        table = table.join(hvg.pivot_table(index="dataset", columns="method", values="pcc_per_sample_mean"))
    print(f"mean HVG r per test sample (truth retrieval: the {args.k} training spots nearest in the demo's truth)")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
