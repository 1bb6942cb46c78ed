"""The per-cohort steps of the survival study, one function per rule (survival_cohort's,
which needs no torch, is cohort.prepare_cohort)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from tissuekd import compute
from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.survival import cohort as cohorts
from tissuekd.survival import evaluate
from tissuekd.survival.train import (
    NEEDS_PATHOLOGY,
    NEEDS_RNA,
    AMKDConfig,
    CohortData,
    FileBags,
    TrainConfig,
    cross_validate,
    predict_external,
)

log = logging.getLogger(__name__)


def load_cohort(patients: str, rna: str, method: str, gene_sets: str | None = None,
                genes: list[str] | None = None) -> CohortData:
    """Inputs a method needs; `genes` (a trained model's) reorders the RNA columns to match."""
    table = pd.read_csv(patients, sep="\t", dtype={"patient": str})
    data = CohortData(patients=table)
    if method in NEEDS_PATHOLOGY:
        data.bags = FileBags(table["features"])
    if method in NEEDS_RNA:
        matrix = pd.read_parquet(rna)
        if matrix.shape[1] == 0:
            raise InputError(rna, f"method {method} needs RNA but the cohort has no RNA matrix")
        if genes is not None:
            missing = [g for g in genes if g not in matrix.columns]
            if missing:
                log.warning("%s: %d of the model's %d genes are missing; they are set to the training mean",
                            rna, len(missing), len(genes))
            matrix = matrix.reindex(columns=genes)
        data.rna, data.genes = matrix.to_numpy(np.float64), list(matrix.columns)
        if gene_sets:
            data.gene_sets = cohorts.read_gene_sets(gene_sets, data.genes)
    return data


def train_method(method: str, patients: str, rna: str, out_models: str, out_predictions: str, *,
                 train: dict, amkd: dict | None = None, gene_sets: str | None = None, teacher_models: str | None = None,
                 device: str = "auto", precision: str = "auto", threads: int | None = None) -> None:
    """Cross-validate one method; the student also loads the teacher's fold models."""
    run = compute.resolve(device, precision, threads)
    loads = "teacher" if method == "student" else method  # the student's teacher needs the RNA
    data = load_cohort(patients, rna, loads, gene_sets)
    teacher = torch.load(teacher_models, weights_only=False) if teacher_models else None
    bundle, predictions = cross_validate(method, data, TrainConfig(**train), run, teacher,
                                         AMKDConfig(**(amkd or {})))
    with atomic_path(out_models) as tmp:
        torch.save(bundle, tmp)
    with atomic_path(out_predictions) as tmp:
        predictions.to_csv(tmp, sep="\t", index=False)


def with_intervals(table: pd.DataFrame, preds: dict[str, pd.DataFrame], fold: str) -> pd.DataFrame:
    """Bootstrap intervals (evaluate.bootstrap_c_index) on the rows of `fold` (pooled or external)."""
    intervals = evaluate.bootstrap_c_index(preds).assign(fold=fold)
    for _, row in intervals.iterrows():
        log.info("%s: 95%% CI %.3f-%.3f%s", row["method"], row["c_index_low"], row["c_index_high"],
                 "" if pd.isna(row.get("minus_pathology")) else
                 f"; minus pathology {row['minus_pathology']:+.3f} ({row['minus_pathology_low']:+.3f} to "
                 f"{row['minus_pathology_high']:+.3f})")
    return table.merge(intervals, on=["method", "fold"], how="left")


def evaluate_cohort(predictions: dict[str, str], student_models: str, out_metrics: str, out_km: str, *,
                    cohort: str, encoder: str, endpoint: str) -> None:
    """C-index per fold for every method; KM curves of the student's risk groups."""
    preds = {m: pd.read_csv(p, sep="\t", dtype={"patient": str}) for m, p in predictions.items()}
    table = evaluate.fold_metrics(preds).assign(cohort=cohort, encoder=encoder, evaluated_on=cohort)
    student = preds["student"]
    bundle = torch.load(student_models, weights_only=False)
    thresholds = bundle["train_median_risk"]
    pvalue = evaluate.plot_km(student, evaluate.risk_groups(student, thresholds),
                              f"{cohort}: AMKD student risk groups (out-of-fold)", out_km, endpoint)
    table["km_logrank_p"] = np.where(table["method"] == "student", pvalue, np.nan)
    table = with_intervals(table, preds, "pooled")
    for method, part in table.groupby("method", sort=False):
        folds, pooled = part[part["fold"] != "pooled"], part[part["fold"] == "pooled"]["c_index"].iloc[0]
        log.info("%s %s: C-index %.3f ± %.3f over %d folds, pooled %.3f", cohort, method, folds["c_index"].mean(),
                 folds["c_index"].std(), len(folds), pooled)
    with atomic_path(out_metrics) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def evaluate_external(models: dict[str, str], patients: str, rna: str, out_metrics: str, out_km: str, *,
                      trained_on: str, cohort: str, encoder: str, endpoint: str, device: str = "cpu",
                      precision: str = "auto") -> None:
    """Models cross-validated on `trained_on`, applied unchanged to `cohort` (mean over folds)."""
    run = compute.resolve(device, precision)
    rows, preds, bundles = [], {}, {}
    for method, path in models.items():
        bundle = bundles[method] = torch.load(path, weights_only=False)
        data = load_cohort(patients, rna, method, genes=bundle["genes"] or None)
        data.gene_sets = bundle["gene_sets"]
        risk = predict_external(bundle, data, run)
        table = data.patients
        preds[method] = table.assign(risk=risk)
        rows.append({"method": method, "fold": "all", "c_index": evaluate.c_index(table["event"], table["time"], risk),
                     "n_patients": len(table), "n_events": int(table["event"].sum())})
        log.info("%s -> %s %s: C-index %.3f", trained_on, cohort, method, rows[-1]["c_index"])
    threshold = float(np.median(list(bundles["student"]["train_median_risk"].values())))
    student = preds["student"]
    pvalue = evaluate.plot_km(student, evaluate.risk_groups(student, threshold),
                              f"{trained_on} -> {cohort}: AMKD student, no retraining", out_km, endpoint)
    out = pd.DataFrame(rows).assign(cohort=trained_on, encoder=encoder, evaluated_on=cohort)
    out["km_logrank_p"] = np.where(out["method"] == "student", pvalue, np.nan)
    out = with_intervals(out, preds, "all")
    with atomic_path(out_metrics) as tmp:
        out.to_csv(tmp, sep="\t", index=False)
