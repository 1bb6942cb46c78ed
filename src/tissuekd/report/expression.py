"""The expression benchmark: every dataset's table, the mean (SD) over datasets, and both as
one HTML page for the report."""

from __future__ import annotations

import pandas as pd

from tissuekd.io.atomic import atomic_path
from tissuekd.report.summary import write_html

COLUMNS = ["pcc_per_sample_mean", "pcc_pooled_mean", "gene_gene_r_mean"]


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """Per encoder, method and gene list: the mean and SD over datasets of each dataset's mean, and
    how many datasets that is (a gene list some datasets lack, as markers, counts only those)."""
    groups = table.groupby(["encoder", "method", "gene_list"])
    agg = groups[COLUMNS].agg(["mean", "std"])
    agg.columns = [f"{a}_{'over_datasets' if b == 'mean' else 'sd_over_datasets'}" for a, b in agg.columns]
    return agg.assign(n_datasets=groups["dataset"].nunique()).reset_index()


def write_expression_benchmark(metrics: list[str], out: dict) -> None:
    """The rule benchmark_expression: `out` has by_dataset, overall and html."""
    table = pd.concat([pd.read_csv(p, sep="\t") for p in metrics], ignore_index=True)
    across = overall(table)
    for frame, path in ((table, out["by_dataset"]), (across, out["overall"])):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    hvg = table[table["gene_list"] == "HVG"].pivot(index=["dataset", "encoder"], columns="method",
                                                    values="pcc_per_sample_mean").round(3).reset_index()
    hvg = hvg[["dataset", "encoder", *pd.unique(table["method"])]]  # methods in the metrics' order, not sorted
    write_html([("Expression study: mean Pearson r on HVG genes per dataset (per test sample, mean over folds)", hvg,
                 "expression-hvg"),
                ("Every dataset, method and gene list (mean ± SD over folds)", table.round(4), "expression-table"),
                ("Across datasets", across.round(4), "expression-overall")], out["html"])
