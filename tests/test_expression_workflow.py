"""The expression study through Snakemake on its demo (three datasets of two patients, HEST
layout): the methods on the same leave-one-patient-out folds, the tables, what a new sample
reruns, and bad sheets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import make_workdir, planned_jobs, snakemake

pytestmark = pytest.mark.workflow
METHODS = {"cmrcnet", "contrastive", "ridge", "knn", "random"}


@pytest.fixture(scope="module")
def expression_run(tmp_path_factory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("expression"), studies=("expression",))
    snakemake("--cores", "2", cwd=workdir)
    return workdir


def hvg(workdir: Path) -> pd.DataFrame:
    table = pd.read_csv(workdir / "results/benchmark/expression_by_dataset.tsv", sep="\t")
    return table[table["gene_list"] == "HVG"].pivot(index="dataset", columns="method", values="pcc_per_sample_mean")


def test_cmrcnet_beats_ridge_and_every_method_beats_random(expression_run):
    """On the demo: CMRCNet's mean HVG r above the HEST ridge baseline on at least two of the
    three datasets, every method well above random retrieval. Measured 2026-12-02 (HVG r,
    cmrcnet / contrastive / ridge / knn / random): COAD .668 / .662 / .527 / .611 / .017, IDC
    .630 / .634 / .494 / .594 / .022, LUAD .592 / .610 / .512 / .561 / .005. The issue's other
    claim, CMRCNet above contrastive-only on two of three, does not hold (one of three, within
    0.02 either way): reconstruction adds nothing measurable on frozen features here."""
    table = hvg(expression_run)
    assert set(table.columns) == METHODS and len(table) == 3
    assert (table["cmrcnet"] > table["ridge"]).sum() >= 2, table
    for method in METHODS - {"random"}:
        assert (table[method] > table["random"] + 0.1).all(), (method, table)


def test_tables_report_both_ways_of_averaging_for_every_gene_list(expression_run):
    table = pd.read_csv(expression_run / "results/benchmark/expression_by_dataset.tsv", sep="\t")
    assert set(table["gene_list"]) == {"HEG", "HVG", "markers"}
    assert (table["n_folds"] == 2).all()
    assert table[["pcc_per_sample_mean", "pcc_pooled_mean", "gene_gene_r_mean"]].notna().all().all()
    overall = pd.read_csv(expression_run / "results/benchmark/expression_overall.tsv", sep="\t")
    assert (overall["n_datasets"] == 3).all() and set(overall["method"]) == METHODS


def test_a_new_sample_reruns_its_own_jobs_and_its_datasets_folds_only(expression_run):
    sheet = pd.read_csv(expression_run / "config/expression_samples.tsv", sep="\t")
    new = sheet[sheet["sample"] == "IDC_P2"].assign(sample="IDC_P3", patient="IDC-P3")
    for column in ("st", "image", "metadata"):
        new[column] = new[column].str.replace("IDC_P2", "IDC_P3")
    pd.concat([sheet, new]).to_csv(expression_run / "config/expression_samples.tsv", sep="\t", index=False)
    try:
        jobs = planned_jobs(expression_run)
    finally:
        sheet.to_csv(expression_run / "config/expression_samples.tsv", sep="\t", index=False)
    assert jobs["demo_expression_sample"] == 1 and jobs["expression_prepare"] == 1
    assert jobs["expression_features"] == 1
    assert jobs["expression_train"] == 3 * 2 and jobs["expression_baseline"] == 3 * 3  # IDC's 3 folds only
    assert jobs["expression_evaluate"] == 1


def test_a_dataset_with_one_patient_stops_before_any_job(tmp_path):
    workdir = make_workdir(tmp_path, studies=("expression",))
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet.loc[sheet["sample"] == "IDC_P2", "patient"] = "IDC-P1"
    sheet.to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "two patients per dataset at least; dataset(s) ['IDC'] have one" in result.stdout + result.stderr
