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
from tissuekd.survival import evaluate
from tissuekd.survival import methods as survival_methods
from tissuekd.survival.bags import CohortData, FileBags
from tissuekd.survival.methods import KM_METHOD, SurvivalMethod
from tissuekd.survival.rna import read_gene_sets
from tissuekd.survival.train import (
    AMKDConfig,
    TrainConfig,
    bundle_method,
    cross_validate,
    predict_external,
)

log = logging.getLogger(__name__)


def load_cohort(patients: str, rna: str, method: str | SurvivalMethod, gene_sets: str | None = None,
                genes: list[str] | None = None, whose: str = "") -> CohortData:
    """Inputs a method needs; `genes` (a trained model's) reorders the RNA columns to match.

    Parameters
    ----------
    patients : str
        The cohort's patients.tsv (cohort.prepare_cohort): patient, time, event, fold, features.
    rna : str
        The cohort's rna.parquet (patients x genes); read only for methods that use RNA.
    method : str or SurvivalMethod
        Decides what is loaded: patch-feature bags for methods that read H&E, the RNA matrix for those that
        read RNA (its entry's `pathology` and `rna`, survival/methods.py); a name is a built-in entry.
    gene_sets : str or None
        GMT file of gene sets over the RNA matrix's genes; None: no gene sets.
    genes : list of str or None
        A trained model's genes: the RNA columns are put in their order, missing genes as NaN (scaled to the
        training mean); None: the matrix's own columns.
    whose : str
        Named in messages about missing genes (e.g. "cohort X, the teacher's models").

    Returns
    -------
    CohortData
        Patients, and bags, RNA and gene sets as the method needs them.
    """
    method = survival_methods.get(method)
    table = pd.read_csv(patients, sep="\t", dtype={"patient": str})
    data = CohortData(patients=table)
    if method.pathology:
        data.bags = FileBags(table["features"])
    if method.rna:
        matrix = pd.read_parquet(rna)
        if matrix.shape[1] == 0:
            raise InputError(rna, f"method {method.name} needs RNA but the cohort has no RNA matrix")
        if genes is not None:
            check_model_genes(rna, matrix.columns, genes, whose)
            matrix = matrix.reindex(columns=genes)
        data.rna, data.genes = matrix.to_numpy(np.float64), list(matrix.columns)
        if gene_sets:
            data.gene_sets = read_gene_sets(gene_sets, data.genes)
    return data


# An external cohort may lack a few of the model's genes (set to the training mean); lacking more than
# this share, its RNA is not the RNA the model learnt from and its C-index would not be the model's.
MAX_MISSING_GENES = 0.2


def check_model_genes(rna: str, measured, genes: list[str], whose: str = "") -> None:
    """Warn about the model's genes an external cohort lacks; stop when more than MAX_MISSING_GENES are."""
    measured_set = set(measured)
    missing = [g for g in genes if g not in measured_set]
    if not missing:
        return
    what = f"{f'({whose}) ' if whose else ''}{len(missing)} of the model's {len(genes)} genes are missing, " \
           f"e.g. {missing[:5]}"
    if len(missing) > MAX_MISSING_GENES * len(genes):
        raise InputError(rna, f"{what}; the cohort's RNA has e.g. {list(measured[:5])}: gene ids of another kind "
                              f"(Ensembl ids vs symbols)? Give the external cohort the training cohort's gene ids")
    log.warning("%s: %s; they are set to the training mean", rna, what)


def train_method(method: str | SurvivalMethod, patients: str, rna: str, out_models: str, out_predictions: str, *,
                 train: dict, amkd: dict | None = None, gene_sets: str | None = None, teacher_models: str | None = None,
                 device: str = "auto", precision: str = "auto", threads: int | None = None) -> None:
    """Cross-validate one method; the student also loads the teacher's fold models.

    Parameters
    ----------
    method : str or SurvivalMethod
        Its entry of survival/methods.py (a name: the built-in entry, "teacher", "student", "pathology" or "rna").
    patients : str
        The cohort's patients.tsv (cohort.prepare_cohort), with the folds every method shares.
    rna : str
        The cohort's rna.parquet (patients x genes).
    out_models : str
        models.pt written: every fold's checkpoints, the config, genes, gene sets and each fold's median
        training-patient risk (the cut for risk groups).
    out_predictions : str
        predictions.tsv written: out-of-fold `risk` (higher = worse) with patient, fold, time, event.
    train : dict
        TrainConfig fields (config survival.train).
    amkd : dict or None
        AMKDConfig fields; read by the student only.
    gene_sets : str or None
        GMT file of gene sets over the RNA matrix's genes; None: no gene sets.
    teacher_models : str or None
        The teacher's models.pt (needed for "student").
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    threads : int or None
        Cap on torch's intra-op threads (None: torch's default).
    """
    run = compute.resolve(device, precision, threads, workload="model")
    method = survival_methods.get(method)
    teacher = torch.load(teacher_models, weights_only=False) if teacher_models else None
    if method.distilled and teacher is None:
        raise ValueError(f"method {method.name} is distilled from {method.teacher}: pass its models (teacher_models)")
    # a distilled method loads its teacher's inputs: the frozen teacher needs them for the targets
    data = load_cohort(patients, rna, bundle_method(teacher) if method.distilled else method, gene_sets)
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
    """C-index per fold for every method; KM curves of the student's risk groups.

    Parameters
    ----------
    predictions : dict of str to str
        Method -> its out-of-fold predictions.tsv (train_method); must include "student".
    student_models : str
        The student's models.pt; each fold's median training-patient risk splits that fold's patients.
    out_metrics : str
        TSV written: C-index, patients and events per method and fold and pooled, 95% bootstrap intervals,
        and the log-rank p-value of the student's risk groups.
    out_km : str
        Kaplan-Meier plot of the student's risk groups (PNG).
    cohort, encoder : str
        Written to the columns of the same name (`evaluated_on` is `cohort`).
    endpoint : str
        The survival endpoint (e.g. "OS"), for the plot's axis.
    """
    preds = {m: pd.read_csv(p, sep="\t", dtype={"patient": str}) for m, p in predictions.items()}
    table = evaluate.fold_metrics(preds).assign(cohort=cohort, encoder=encoder, evaluated_on=cohort)
    km = preds[KM_METHOD]
    bundle = torch.load(student_models, weights_only=False)
    thresholds = bundle["train_median_risk"]
    pvalue = evaluate.plot_km(km, evaluate.risk_groups(km, thresholds),
                              f"{cohort}: {survival_methods.get(KM_METHOD).label} risk groups (out-of-fold)", out_km,
                              endpoint)
    table["km_logrank_p"] = np.where(table["method"] == KM_METHOD, pvalue, np.nan)
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
    """Models cross-validated on `trained_on`, applied unchanged to `cohort` (mean over folds).

    Parameters
    ----------
    models : dict of str to str
        Method -> its models.pt from the training cohort; must include "student".
    patients : str
        The evaluated cohort's patients.tsv (folds unused).
    rna : str
        The evaluated cohort's rna.parquet; its genes are matched to each model's by name.
    out_metrics : str
        TSV written: C-index over all patients per method, 95% bootstrap intervals, and the log-rank p-value of
        the student's risk groups.
    out_km : str
        Kaplan-Meier plot of the student's risk groups (PNG), cut at the median of its folds' training medians.
    trained_on : str
        The training cohort (column `cohort`).
    cohort : str
        The evaluated cohort (column `evaluated_on`).
    encoder : str
        Written to column `encoder`.
    endpoint : str
        The survival endpoint (e.g. "OS"), for the plot's axis.
    device : str, default "cpu"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    """
    run = compute.resolve(device, precision, workload="model")
    rows, preds, bundles = [], {}, {}
    for method, path in models.items():
        bundle = bundles[method] = torch.load(path, weights_only=False)
        data = load_cohort(patients, rna, bundle_method(bundle), genes=bundle["genes"] or None,
                           whose=f"cohort {cohort}'s RNA, as its sheet's rna file gave it, for the {method} models "
                                 f"trained on {trained_on}")
        data.gene_sets = bundle["gene_sets"]
        risk = predict_external(bundle, data, run)
        table = data.patients
        preds[method] = table.assign(risk=risk)
        rows.append({"method": method, "fold": "all", "c_index": evaluate.c_index(table["event"], table["time"], risk),
                     "n_patients": len(table), "n_events": int(table["event"].sum())})
        log.info("%s -> %s %s: C-index %.3f", trained_on, cohort, method, rows[-1]["c_index"])
    threshold = float(np.median(list(bundles[KM_METHOD]["train_median_risk"].values())))
    km = preds[KM_METHOD]
    pvalue = evaluate.plot_km(km, evaluate.risk_groups(km, threshold),
                              f"{trained_on} -> {cohort}: {survival_methods.get(KM_METHOD).label}, no retraining",
                              out_km, endpoint)
    out = pd.DataFrame(rows).assign(cohort=trained_on, encoder=encoder, evaluated_on=cohort)
    out["km_logrank_p"] = np.where(out["method"] == KM_METHOD, pvalue, np.nan)
    out = with_intervals(out, preds, "all")
    with atomic_path(out_metrics) as tmp:
        out.to_csv(tmp, sep="\t", index=False)
