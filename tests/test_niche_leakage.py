"""No test-strip information reaches training: the rule-level student and Histology NOLAN,
run on slide files where everything about test cells is replaced, train the same model."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tissuekd.niche.steps import histology_nolan, train_student
from tissuekd.niche.train import NolanConfig, StudentConfig

K = 4


def write_slide(folder, features: np.ndarray, teacher: np.ndarray, xy: np.ndarray, role: np.ndarray) -> dict:
    folder.mkdir()
    ids = np.array([f"c{i}" for i in range(len(xy))])
    paths = {name: folder / name for name in ("cells.parquet", "split.parquet", "radius.json", "f.h5", "t.parquet")}
    pd.DataFrame({"cell_id": ids, "x_um": xy[:, 0], "y_um": xy[:, 1]}).to_parquet(paths["cells.parquet"])
    pd.DataFrame({"cell_id": ids, "role": role}).to_parquet(paths["split.parquet"])
    paths["radius.json"].write_text(json.dumps({"radius_um": 25.0}))
    with h5py.File(paths["f.h5"], "w") as h5:
        h5["features"] = features
        h5["cell_id"] = ids.astype("S")
    logits = pd.DataFrame(teacher, columns=[f"logit_{i}" for i in range(K)])
    logits.insert(0, "niche", teacher.argmax(1))
    logits.insert(0, "cell_id", ids)
    logits.to_parquet(paths["t.parquet"])
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """The same slide twice; in the second, test cells' features and teacher logits are noise."""
    rng = np.random.default_rng(0)
    side = 36
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.c_[gx.ravel(), gy.ravel()] * 10.0 + rng.uniform(-2, 2, (side * side, 2))
    niche = (xy[:, 0] > 180).astype(int) + 2 * (xy[:, 1] % 120 > 60)
    features = rng.normal(0, 1, (K, 96))[niche] + rng.normal(0, 2, (len(xy), 96))  # > 64 dims: PCA runs
    teacher = np.eye(K)[niche] * 5
    role = np.where(xy[:, 1] > 250, "test", np.where(xy[:, 1] > 215, "buffer", "train"))  # buffer > radius
    test = role == "test"
    features2, teacher2 = features.copy(), teacher.copy()
    features2[test] = rng.normal(5, 9, (test.sum(), 96))
    teacher2[test] = rng.normal(0, 9, (test.sum(), K))
    root = tmp_path_factory.mktemp("leak")
    return (write_slide(root / "a", features, teacher, xy, role),
            write_slide(root / "b", features2, teacher2, xy, role), role)


def _student(paths, out):
    train_student(paths["f.h5"], paths["cells.parquet"], paths["split.parquet"], paths["radius.json"],
                  paths["t.parquet"], K, StudentConfig(epochs=2), str(out / "m.pt"), str(out / "l.parquet"),
                  max_neighbors=16)
    return torch.load(out / "m.pt", weights_only=False)["state_dict"], pd.read_parquet(out / "l.parquet")


def test_student_weights_do_not_depend_on_test_cells(slides, tmp_path):
    a, b, role = slides
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (state_a, logits_a), (state_b, logits_b) = _student(a, tmp_path / "a"), _student(b, tmp_path / "b")
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    train = role == "train"
    assert np.array_equal(logits_a["niche"][train], logits_b["niche"][train])
    assert not np.array_equal(logits_a["niche"][~train], logits_b["niche"][~train])  # the noise did arrive


def test_histology_nolan_does_not_fit_on_test_cells(slides, tmp_path):
    a, b, role = slides
    outs = []
    for name, paths in (("a", a), ("b", b)):
        out = tmp_path / f"{name}.parquet"
        histology_nolan(paths["f.h5"], paths["cells.parquet"], paths["split.parquet"], paths["radius.json"], K,
                        NolanConfig(epochs=2, cells_per_epoch=500), str(out), max_neighbors=16)
        outs.append(pd.read_parquet(out).filter(like="logit_").to_numpy())
    train = role == "train"
    assert np.allclose(outs[0][train], outs[1][train], atol=1e-5)


def test_histology_nolan_fits_on_exactly_the_students_training_cells(slides, tmp_path, monkeypatch):
    """Buffer cells' crops and neighbourhoods reach the test strip: the baseline, like the
    student, is fitted centred on train cells only."""
    from tissuekd.niche import steps

    seen = {}
    real = steps.fit_nolan

    def spy(x, neighborhoods, centres, *args, **kwargs):
        seen["centres"] = centres.numpy().copy()
        return real(x, neighborhoods, centres, *args, **kwargs)

    monkeypatch.setattr(steps, "fit_nolan", spy)
    a, _, role = slides
    histology_nolan(a["f.h5"], a["cells.parquet"], a["split.parquet"], a["radius.json"], K,
                    NolanConfig(epochs=1, cells_per_epoch=200), str(tmp_path / "o.parquet"), max_neighbors=16)
    assert np.array_equal(seen["centres"], np.flatnonzero(role == "train"))


def test_temperature_is_chosen_on_training_cells_only(slides, tmp_path, monkeypatch):
    """select_temperature: one student per candidate on inner-train cells, scored on an inner
    band of training cells; test cells are neither centres nor scored, and the choice and the
    final model do not change when everything about the test cells is noise."""
    from tissuekd.niche import steps

    centres = []
    real = steps.fit_student

    def spy(x, nb, c, *args, **kwargs):
        centres.append(set(c.tolist()))
        return real(x, nb, c, *args, **kwargs)

    monkeypatch.setattr(steps, "fit_student", spy)
    a, b, role = slides
    cfg = StudentConfig(epochs=2, select_temperature=[1.0, 4.0])
    states = []
    for name, paths in (("a", a), ("b", b)):
        out = tmp_path / name
        out.mkdir()
        train_student(paths["f.h5"], paths["cells.parquet"], paths["split.parquet"], paths["radius.json"],
                      paths["t.parquet"], K, cfg, str(out / "m.pt"), str(out / "l.parquet"), max_neighbors=16)
        states.append(torch.load(out / "m.pt", weights_only=False)["state_dict"])
    train = set(np.flatnonzero(role == "train").tolist())
    assert len(centres) == 6  # per slide: two candidates, then the final student
    assert all(c < train for c in centres[0:2]) and centres[2] == train
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.drop(columns="logit_3"), "expected 4 logit columns"),
    (lambda f: f.iloc[5:], "5 cells have no logits (e.g. c0)"),
    (lambda f: f.assign(logit_1=np.nan), "NaN or infinite"),
    (lambda f: f.drop(columns="cell_id"), "needs a cell_id column"),
])
def test_external_teacher_logits_are_checked(slides, tmp_path, damage, message):
    from tissuekd.errors import InputError
    from tissuekd.niche.steps import read_logits

    paths = slides[0]
    bad = tmp_path / "external.parquet"
    damage(pd.read_parquet(paths["t.parquet"])).to_parquet(bad)
    with pytest.raises(InputError, match=str(bad)) as err:
        read_logits(str(bad), pd.read_parquet(paths["cells.parquet"]), K)
    assert message in str(err.value)


def test_the_inner_validation_band_is_a_radius_away_from_every_inner_train_cell():
    """No inner-train neighbourhood (cells within the radius) reaches into the band it is scored on."""
    from tissuekd.niche.steps import inner_band

    y = np.random.default_rng(0).uniform(0, 1000, 2000)
    train = np.flatnonzero(y < 900)  # the rest: the test strip and its buffer
    inner, val = inner_band(y, train, share=0.2, radius=30.0)
    assert set(inner) | set(val) <= set(train) and not set(inner) & set(val)
    assert len(val) == pytest.approx(0.2 * len(train), abs=2)
    assert y[val].min() - y[inner].max() >= 30.0
