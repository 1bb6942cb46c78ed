"""Survival library: the loss and metrics against reference computations, time bins and folds,
the AMKD terms, and that no test-fold information reaches a trained model."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tissuekd.compute import CPU
from tissuekd.errors import InputError
from tissuekd.survival import losses
from tissuekd.survival.bags import CohortData
from tissuekd.survival.cohort import assign_folds
from tissuekd.survival.evaluate import c_index, fold_metrics, plot_km
from tissuekd.survival.steps import load_cohort
from tissuekd.survival.train import (
    AMKDConfig,
    TrainConfig,
    build_model,
    cross_validate,
    fit_fold,
    load_fold_model,
    predict,
    predict_external,
)


def reference_nll(logits: np.ndarray, bins: np.ndarray, events: np.ndarray) -> float:
    """The discrete-time likelihood written out: P(T = y) = h_y prod_{i<y} (1 - h_i) for an
    event, P(T > y) = prod_{i<=y} (1 - h_i) for a censored patient."""
    h = 1 / (1 + np.exp(-logits))
    total = 0.0
    for hz, y, e in zip(h, bins, events):
        survive_before = np.prod(1 - hz[:y])
        p = hz[y] * survive_before if e else survive_before * (1 - hz[y])
        total -= np.log(p)
    return total / len(bins)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(2, 6), st.integers(0, 10_000))
def test_nll_matches_the_written_out_likelihood(n, n_bins, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, n_bins))
    bins, events = rng.integers(0, n_bins, n), rng.integers(0, 2, n)
    ours = losses.nll_survival(torch.tensor(logits), torch.tensor(bins), torch.tensor(events)).item()
    assert ours == pytest.approx(reference_nll(logits, bins, events), rel=1e-5)


def harrell(event, time, risk) -> float:
    """Harrell's C by counting pairs: i is comparable with j when i has the event and T_i < T_j,
    or T_i = T_j and j is censored (j outlived i's event time)."""
    concordant = ties = pairs = 0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            pairs += 1
            concordant += risk[i] > risk[j]
            ties += risk[i] == risk[j]
    return (concordant + 0.5 * ties) / pairs


def test_c_index_is_harrells_c():
    rng = np.random.default_rng(1)
    time = rng.integers(1, 60, 40).astype(float)  # ties in time included
    event = rng.integers(0, 2, 40)
    risk = np.round(rng.normal(size=40), 1)  # and ties in risk
    assert c_index(event, time, risk) == pytest.approx(harrell(event, time, risk))
    assert c_index(event, time, -time) > 0.9  # risk argument the right way round


def test_pooled_row_is_the_c_index_of_all_out_of_fold_predictions():
    rng = np.random.default_rng(2)
    pred = pd.DataFrame({"fold": np.repeat([0, 1], 20), "time": rng.uniform(1, 100, 40),
                         "event": rng.integers(0, 2, 40), "risk": rng.normal(size=40)})
    table = fold_metrics({"m": pred})
    assert list(table["fold"]) == ["0", "1", "pooled"]
    assert table["c_index"].iloc[-1] == pytest.approx(c_index(pred["event"], pred["time"], pred["risk"]))
    for fold in (0, 1):  # each fold's row: the C-index of that fold's patients alone
        part = pred[pred["fold"] == fold]
        assert table["c_index"].iloc[fold] == pytest.approx(harrell(part["event"].to_numpy(), part["time"].to_numpy(),
                                                                    part["risk"].to_numpy()))
        assert table["n_patients"].iloc[fold] == 20 and table["n_events"].iloc[fold] == part["event"].sum()


def test_bootstrap_intervals_cover_the_point_estimate_and_pair_the_methods():
    from tissuekd.survival.evaluate import bootstrap_c_index

    rng = np.random.default_rng(3)
    n = 200
    hazard = rng.normal(size=n)
    time, event = rng.exponential(np.exp(-hazard)), (rng.random(n) < 0.7).astype(int)
    shared = rng.normal(size=n)  # both methods carry the same noise: their errors are correlated
    preds = {m: pd.DataFrame({"patient": [f"p{i}" for i in range(n)], "time": time, "event": event,
                              "risk": hazard * w + shared}) for m, w in (("student", 1.0), ("pathology", 0.6))}
    table = bootstrap_c_index(preds, n_boot=300).set_index("method")
    for m, pred in preds.items():
        point = c_index(event, time, pred["risk"])
        assert table.loc[m, "c_index_low"] < point < table.loc[m, "c_index_high"]
    diff = table.loc["student"]
    assert diff["minus_pathology"] == pytest.approx(c_index(event, time, preds["student"]["risk"])
                                                    - c_index(event, time, preds["pathology"]["risk"]))
    assert 0 < diff["minus_pathology_low"] < diff["minus_pathology"] < diff["minus_pathology_high"]
    # the paired interval is narrower than the two marginal intervals would suggest
    width = diff["minus_pathology_high"] - diff["minus_pathology_low"]
    assert width < (table["c_index_high"] - table["c_index_low"]).min()


def test_time_bins_are_quantiles_of_uncensored_times_only():
    times = np.array([1, 2, 3, 4, 100, 200, 300, 400.0])
    events = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    edges = losses.time_bins(times, events, 2)
    assert edges.tolist() == [2.5]  # censored times (100-400) play no part
    assert losses.to_bin(np.array([0.5, 2.5, 1000]), edges).tolist() == [0, 1, 1]


def test_folds_are_stratified_fixed_and_cover_every_patient_once():
    events = np.r_[np.ones(20), np.zeros(30)].astype(int)
    folds = assign_folds(events, 5, seed=0)
    assert np.array_equal(folds, assign_folds(events, 5, seed=0))
    assert sorted(np.bincount(folds)) == [10] * 5
    assert (np.bincount(folds[events == 1]) == 4).all()


@pytest.mark.parametrize("discrepancy", ["one_heavy", "uniform_0_4"])
def test_redundancy_reduction_is_minimal_when_student_equals_teacher(discrepancy):
    """Unequal patient weights, a batch smaller than the width (rank-deficient correlations):
    identical embeddings still give the minimum, 0, and any perturbation costs."""
    torch.manual_seed(0)
    z = torch.randn(8, 64) @ torch.randn(64, 64)  # correlated dimensions, 8 patients
    d = torch.zeros(8) if discrepancy == "one_heavy" else torch.rand(8) * 4
    if discrepancy == "one_heavy":
        d[2] = 6.0  # this patient carries ~98% of the weight
    same = losses.adaptive_redundancy_reduction(z, z.clone(), d).item()
    assert same == pytest.approx(0.0, abs=1e-5)
    for scale in (0.1, 1.0):
        noisy = losses.adaptive_redundancy_reduction(z + scale * z.std() * torch.randn_like(z), z, d).item()
        assert noisy > 1e-4  # the minimum is only at the teacher
    assert losses.adaptive_redundancy_reduction(torch.randn(8, 64), z, d).item() > 0.5


def test_weighted_correlation_matches_numpy_for_equal_and_unequal_weights():
    torch.manual_seed(1)
    a, b = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    c = losses.weighted_correlation(a, b, torch.full((20, 1), 1 / 20, dtype=torch.float64))
    assert np.allclose(c.numpy(), np.corrcoef(a.numpy().T, b.numpy().T)[:3, 3:], atol=1e-8)
    # unequal weights: numpy's weighted covariance (aweights), normalised to correlations
    w = np.random.default_rng(1).uniform(0, 4, 20) ** 3
    cov = np.cov(np.c_[a.numpy(), b.numpy()].T, aweights=w)
    reference = (cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))))[:3, 3:]
    c = losses.weighted_correlation(a, b, torch.from_numpy(w / w.sum())[:, None])
    assert np.allclose(c.numpy(), reference, atol=1e-8)
    assert not np.allclose(reference, np.corrcoef(a.numpy().T, b.numpy().T)[:3, 3:], atol=0.05)  # the weights matter


def test_redundancy_reduction_weighs_patients_the_student_gets_wrong():
    torch.manual_seed(0)
    zs, zt = torch.randn(16, 4, requires_grad=True), torch.randn(16, 4)
    discrepancy = torch.zeros(16)
    discrepancy[3] = 5.0
    losses.adaptive_redundancy_reduction(zs, zt, discrepancy).backward()
    grad = zs.grad.norm(dim=1)
    assert grad[3] > 3 * grad[np.arange(16) != 3].mean()


# ---- a small synthetic cohort: risk carried by patch features and RNA ----

def synthetic_cohort(n=40, seed=0) -> CohortData:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    bags = [torch.tensor(rng.normal(r, 1.0, (int(rng.integers(5, 12)), 16)), dtype=torch.float16) for r in risk]
    rna = rng.normal(0, 1, (n, 30))
    rna[:, :5] += risk[:, None]
    time = rng.exponential(100 * np.exp(-risk)) + 1
    event = (rng.random(n) < 0.7).astype(int)
    patients = pd.DataFrame({"patient": [f"P{i:03d}" for i in range(n)], "time": time, "event": event,
                             "fold": assign_folds(event, 4, 0)})
    gene_sets = {"s1": list(range(5)), "s2": list(range(5, 30))}
    return CohortData(patients, bags, rna, [f"G{i}" for i in range(30)], gene_sets)


FAST = TrainConfig(epochs=3, hidden=16, members=1)


def replace_test_fold(data: CohortData, fold: int, seed: int) -> CohortData:
    """The same cohort with every fact about the patients of `fold` replaced by noise."""
    rng = np.random.default_rng(seed)
    test = data.patients["fold"].to_numpy() == fold
    patients = data.patients.copy()
    patients.loc[test, "time"] = rng.uniform(1, 500, test.sum())
    patients.loc[test, "event"] = rng.integers(0, 2, test.sum())
    bags = [torch.tensor(rng.normal(0, 5, b.shape), dtype=torch.float16) if t else b for b, t in zip(data.bags, test)]
    rna = data.rna.copy()
    rna[test] = rng.normal(0, 5, rna[test].shape)
    return CohortData(patients, bags, rna, data.genes, data.gene_sets)


@pytest.mark.parametrize("method", ["teacher", "pathology", "rna"])
def test_test_fold_patients_do_not_change_the_trained_model(method):
    data = synthetic_cohort()
    noisy = replace_test_fold(data, 0, seed=5)
    train = np.flatnonzero(data.patients["fold"].to_numpy() != 0)
    a = fit_fold(method, data, train, FAST, 0, CPU)
    b = fit_fold(method, noisy, train, FAST, 0, CPU)
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert np.array_equal(a["edges"], b["edges"])


def test_student_ignores_test_patients_and_never_reads_rna_at_inference():
    data = synthetic_cohort()
    teacher, _ = cross_validate("teacher", data, FAST)
    train = np.flatnonzero(data.patients["fold"].to_numpy() != 0)

    def student(cohort):
        frozen = {"model": load_fold_model(teacher, 0, 0, cohort)}
        return fit_fold("student", cohort, train, FAST, 0, CPU, frozen, AMKDConfig(kd=1.0))  # every term on

    a, b = student(data), student(replace_test_fold(data, 0, seed=6))
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    model = build_model("student", data, FAST)
    a.pop("rna_mean"), a.pop("rna_std")  # as cross_validate stores a student
    without_rna = CohortData(data.patients, data.bags, None, data.genes)
    assert np.array_equal(predict(model, without_rna, a, CPU), predict(model, data, a, CPU))


def test_amkd_weights_are_chosen_inside_each_training_fold(monkeypatch):
    """With candidates, every outer fold picks its weights on an inner validation split of its
    own training patients: no fold's test patients are trained on or scored in the choice."""
    from tissuekd.survival import train as train_module

    data = synthetic_cohort()
    teacher, _ = cross_validate("teacher", data, FAST)
    seen = []
    real = train_module.fit_fold

    def spy(method, cohort, train, *args, **kwargs):
        seen.append(set(train.tolist()))
        return real(method, cohort, train, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit_fold", spy)
    amkd = AMKDConfig(kd=0.0, select={"kd": [0.0, 1.0], "genomic": [0.5, 1.0]})
    bundle, predictions = cross_validate("student", data, FAST, teacher_ckpt=teacher, amkd=amkd)
    folds = data.patients["fold"].to_numpy()
    assert sorted(bundle["selection"]) == sorted(set(folds))
    for scores in bundle["selection"].values():
        assert len(scores) == 4 and {(s["kd"], s["genomic"]) for s in scores} == {(0.0, 0.5), (0.0, 1.0),
                                                                                 (1.0, 0.5), (1.0, 1.0)}
        assert all(0 <= s["inner_c_index"] <= 1 for s in scores)
    # per fold: 4 candidates on inner-train patients, then the member on all training patients
    for i, fold in enumerate(sorted(set(folds))):
        train = set(np.flatnonzero(folds != fold).tolist())
        inner, final = seen[5 * i : 5 * i + 4], seen[5 * i + 4]
        assert final == train and all(s < train and len(s) < len(train) for s in inner)
    assert len(predictions) == len(data.patients)


def test_inner_split_is_stratified_and_inside_the_training_patients():
    from tissuekd.survival.train import inner_split

    events = np.array([0, 1] * 20)
    train = np.arange(8, 40)
    inner, val = inner_split(events, train, 0.25, seed=0)
    assert set(inner) | set(val) == set(train) and not set(inner) & set(val)
    assert (events[val] == 1).sum() == (events[val] == 0).sum() == 4

def test_bootstrap_of_a_cohort_without_events_gives_no_interval():
    from tissuekd.survival.evaluate import bootstrap_c_index

    pred = pd.DataFrame({"patient": ["a", "b", "c"], "time": [1.0, 2.0, 3.0], "event": [0, 0, 0],
                         "risk": [0.1, 0.2, 0.3]})
    table = bootstrap_c_index({"student": pred, "pathology": pred}, n_boot=20)
    assert list(table["method"]) == ["student", "pathology"] and table["c_index_low"].isna().all()


def test_an_external_cohort_of_another_feature_width_is_refused_by_name():
    """Models trained on one encoder's features met another's inside torch, naming no file."""
    data = synthetic_cohort()
    bundle, _ = cross_validate("pathology", data, FAST)
    other = synthetic_cohort(seed=1)
    other.bags = [bag[:, :8] for bag in other.bags]
    with pytest.raises(InputError, match=r"external cohort: features are 8-d, the pathology models take 16-d"):
        predict_external(bundle, CohortData(other.patients, other.bags, other.rna, other.genes, other.gene_sets))


def test_external_rna_with_other_gene_ids_stops_and_a_few_missing_genes_warn(tmp_path, caplog):
    patients = tmp_path / "patients.tsv"
    pd.DataFrame({"patient": ["P1", "P2"], "time": [10, 20], "event": [1, 0], "fold": [-1, -1],
                  "features": ["", ""]}).to_csv(patients, sep="\t", index=False)
    genes = [f"G{i}" for i in range(10)]
    rna = tmp_path / "rna.parquet"
    pd.DataFrame(np.ones((2, 10)), index=["P1", "P2"], columns=[f"ENSG{i}" for i in range(10)]).to_parquet(rna)
    with pytest.raises(InputError, match=r"rna.parquet: 10 of the model's 10 genes are missing.*ENSG0"):
        load_cohort(str(patients), str(rna), "rna", genes=genes)
    with pytest.raises(InputError, match=r"rna.parquet: \(cohort ext's RNA, for the rna models\) 10 of the"):
        load_cohort(str(patients), str(rna), "rna", genes=genes, whose="cohort ext's RNA, for the rna models")
    pd.DataFrame(np.ones((2, 9)), index=["P1", "P2"], columns=genes[:9]).to_parquet(rna)
    with caplog.at_level("WARNING"):
        data = load_cohort(str(patients), str(rna), "rna", genes=genes)
    assert data.genes == genes and np.isnan(data.rna[:, 9]).all()
    assert "1 of the model's 10 genes are missing, e.g. ['G9']" in caplog.text


def test_kaplan_meier_plot_marks_each_censored_patient_on_its_curve(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from sksurv.nonparametric import kaplan_meier_estimator

    pred = pd.DataFrame({"time": [5.0, 8, 12, 12, 20, 3, 9, 15], "event": [1, 0, 1, 0, 0, 1, 1, 0]})
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_km(pred, groups, "t", str(tmp_path / "km.png"))
    ticks = [line for line in figures[0].axes[0].lines if line.get_marker() == "|" and len(line.get_xdata())]
    for group, line in zip((0, 1), ticks, strict=True):
        part = pred[groups == group]
        t, s = kaplan_meier_estimator(part["event"].astype(bool).to_numpy(), part["time"].to_numpy())
        censored = part.loc[part["event"] == 0, "time"].to_numpy()
        assert np.array_equal(line.get_xdata(), censored)
        assert np.allclose(line.get_ydata(), [s[t <= c][-1] for c in censored])  # the curve after that time
