"""One method table per study (src/tissuekd/{niche,survival}/methods.py): the rules, the scripts,
evaluation and the benchmark tables read it, so a method added to it — here through the
documented hook, a variant in the config's `niche.methods` / `survival.methods` — is planned,
evaluated and tabled with no other edit (docs/architecture.md, "Adding things")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, job_stats, make_workdir, planned_jobs, snakemake

from tissuekd.errors import InputError
from tissuekd.niche import methods as niche_methods
from tissuekd.survival import methods as survival_methods

VARIANTS = {
    "survival__methods": {
        "pathology_h32": {"like": "pathology", "label": "pathology-only, hidden 32",
                          "config": {"train": {"hidden": 32, "seed": 1}}},
        "student_kd": {"like": "student", "config": {"amkd": {"kd": 0.5}}},
    },
    "niche__methods": {"student_t4": {"like": "student", "config": {"student": {"temperature": 4.0}}}},
}
SDIR = "results/survival/demo_tcga/demo-mobilenet-224"


def job_blocks(out: str, rule: str) -> list[str]:
    """The dry run's job descriptions of `rule`."""
    return [block for block in out.split("\n\n") if f"rule {rule}:" in block]


def field(block: str, name: str) -> list[str]:
    line = next(ln for ln in block.splitlines() if ln.strip().startswith(f"{name}:"))
    return [item.strip() for item in line.split(":", 1)[1].split(",")]


def test_a_method_added_in_the_config_is_planned_evaluated_and_benchmarked(tmp_path):
    base = make_workdir(tmp_path / "base", studies=("niche", "survival"), niche__k=[10])
    plus = make_workdir(tmp_path / "plus", studies=("niche", "survival"), niche__k=[10], **VARIANTS)
    out = snakemake("-n", "--cores", "1", cwd=plus).stdout
    before, after = planned_jobs(base), job_stats(out)
    slides = 2  # make_workdir's niche sheet; one encoder, one K, one cross-validated survival cohort
    added = {"survival_fit": 1, "survival_student": 1, "niche_student": slides}
    assert after == {rule: n + added.get(rule, 0) for rule, n in before.items()}, (before, after)
    fit = [b for b in job_blocks(out, "survival_fit") if "method=pathology_h32" in b]
    assert len(fit) == 1 and f"{SDIR}/pathology_h32/models.pt" in field(fit[0], "output")
    distilled = [b for b in job_blocks(out, "survival_student") if "method=student_kd" in b]
    assert len(distilled) == 1 and f"{SDIR}/teacher/models.pt" in field(distilled[0], "input")
    assert field(distilled[0], "log") == ["results/logs/survival/student_kd/demo-mobilenet-224/demo_tcga.log"]
    (evaluate,) = job_blocks(out, "survival_evaluate")
    assert [p for p in field(evaluate, "input") if p.endswith("predictions.tsv")] == [
        f"{SDIR}/{m}/predictions.tsv" for m in ("teacher", "student", "pathology", "rna", "pathology_h32",
                                                 "student_kd")]
    (external,) = job_blocks(out, "survival_external")
    assert {f"{SDIR}/pathology_h32/models.pt", f"{SDIR}/student_kd/models.pt"} <= set(field(external, "input"))
    for block in job_blocks(out, "niche_evaluate") + job_blocks(out, "niche_maps"):
        inputs = [p for p in field(block, "input") if not p.endswith("labels.parquet")]  # evaluation's too
        assert [p.split("/")[-2] for p in inputs[3:]] == ["student", "hist_nolan", "hist_leiden", "student_t4"]
    (runtimes,) = job_blocks(out, "benchmark_runtimes")
    assert "results/benchmarks/survival/fit/demo-mobilenet-224/demo_tcga_pathology_h32.tsv" in field(runtimes, "input")
    assert "results/benchmarks/niche/student_t4/demo-mobilenet/k10/breast_demo.tsv" in field(runtimes, "input")

    # the benchmark rules' scripts, on metrics tables with a row per method of the run's table
    config = yaml.safe_load((plus / "config" / "config.yaml").read_text())
    survival = list(survival_methods.from_config(config["survival"]))
    niche = list(niche_methods.from_config(config["niche"]))
    assert survival == ["teacher", "student", "pathology", "rna", "pathology_h32", "student_kd"]
    assert niche == ["student", "hist_nolan", "hist_leiden", "student_t4"]
    tables = survival_benchmark(tmp_path / "survival", config, survival)
    for key in ("folds", "by_cohort", "overall"):
        assert list(dict.fromkeys(tables[key]["method"])) == survival, key
    by_cohort = tables["by_cohort"].set_index(["validation", "method"])
    assert by_cohort.loc[("external", "pathology_h32"), "c_index_pooled"] == pytest.approx(0.6)
    summary = niche_benchmark(tmp_path / "niche", config, niche)
    assert list(dict.fromkeys(summary["method"])) == ["teacher", *niche]


def run_script(name: str, config: dict, inputs: list[str] | dict[str, list[str]], outputs: dict[str, str],
               log: Path) -> None:
    """A rule's script as Snakemake runs it, in its own process, with a stand-in `snakemake`
    (named inputs as attributes, like Snakemake's)."""
    job = {"input": inputs, "output": outputs, "log": [str(log)], "config": config}
    code = ("import json, runpy, sys, types; job = json.loads(sys.argv[1]); "
            "job['input'] = types.SimpleNamespace(**job['input']) if isinstance(job['input'], dict) else job['input']; "
            "runpy.run_path(sys.argv[2], init_globals={'snakemake': types.SimpleNamespace(**job)})")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(job), str(REPO / "scripts" / name)],
                            capture_output=True, text=True)
    assert result.returncode == 0, log.read_text() if log.exists() else result.stderr


def survival_benchmark(folder: Path, config: dict, methods: list[str]) -> dict[str, pd.DataFrame]:
    folder.mkdir()
    rows = []
    for i, method in enumerate(reversed(methods)):  # rows in another order than the table's
        rows += [{"method": method, "fold": str(f), "c_index": 0.6 + 0.01 * i, "n_patients": 12, "n_events": 8,
                  "cohort": "demo_tcga", "encoder": "demo-mobilenet", "evaluated_on": "demo_tcga",
                  "km_logrank_p": np.nan} for f in (0, 1, "pooled")]
    external = [{"method": m, "fold": "all", "c_index": 0.6, "n_patients": 24, "n_events": 15, "cohort": "demo_tcga",
                 "encoder": "demo-mobilenet", "evaluated_on": "demo_cptac", "km_logrank_p": np.nan} for m in methods]
    paths = []
    for name, frame in (("cv", rows), ("external", external)):
        paths.append(str(folder / f"{name}.tsv"))
        pd.DataFrame(frame).to_csv(paths[-1], sep="\t", index=False)
    outputs = {key: str(folder / f"survival_{key}.tsv") for key in ("folds", "by_cohort", "overall")}
    run_script("benchmark_survival.py", config, paths, {**outputs, "html": str(folder / "tables.html")},
               folder / "log")
    return {key: pd.read_csv(path, sep="\t") for key, path in outputs.items()}


def niche_benchmark(folder: Path, config: dict, methods: list[str]) -> pd.DataFrame:
    from tissuekd.niche.evaluate import COLUMNS

    folder.mkdir()
    rows = [{"slide": "s", "tissue": "breast", "k": 10, "encoder": "demo-mobilenet", "method": m, "ARI": 0.5,
             "NMI": 0.5, "JSD": 0.1, "matched_coverage": 1.0, "probe_F1": np.nan, "ARI_truth": np.nan,
             "NMI_truth": np.nan, "n_cells": 100, "n_niches": 10, "probe_classes": ""}
            for m in ["teacher", *reversed(methods)]]
    pd.DataFrame(rows)[COLUMNS].to_csv(folder / "metrics.tsv", sep="\t", index=False)
    (folder / "s").mkdir()
    (folder / "s/slide.json").write_text(json.dumps({"n_cells": 100, "n_genes": 5, "he_mpp": 0.2125,
                                                     "he_stain_agreement": None}))
    outputs = {key: str(folder / f"{key}.tsv") for key in ("summary", "by_tissue", "overall", "slides")}
    run_script("benchmark_niche.py", config, {"metrics": [str(folder / "metrics.tsv")],
                                              "slides": [str(folder / "s/slide.json")]},
               {**outputs, "html": str(folder / "tables.html"), "bars": str(folder / "bars.png")}, folder / "log")
    return pd.read_csv(outputs["summary"], sep="\t")


def test_a_variant_changes_only_its_own_jobs_settings():
    survival = {"train": {"hidden": 64, "seed": 0, "epochs": 20}, "amkd": {"kd": 0.0}, "methods": VARIANTS[
        "survival__methods"]}
    methods = survival_methods.from_config(survival)
    variant = methods["pathology_h32"]
    assert variant.model == "PathologyModel" and not variant.distilled and variant.rule == "survival_fit"
    assert variant.settings(survival)["train"] == {"hidden": 32, "seed": 1, "epochs": 20}
    assert variant.settings(survival)["amkd"] is survival["amkd"]
    assert methods["student_kd"].rule == "survival_student" and methods["student_kd"].teacher == "teacher"
    assert methods["student_kd"].settings(survival)["amkd"] == {"kd": 0.5}
    assert methods["student_kd"].label == "student kd"  # no label given: the name
    for name in survival_methods.METHODS:
        assert methods[name] == survival_methods.METHODS[name] and methods[name].settings(survival) == survival
    niche = {"student": {"temperature": 2.0, "epochs": 8}, "methods": VARIANTS["niche__methods"]}
    t4 = niche_methods.from_config(niche)["student_t4"]
    assert t4.rule == "niche_student" and t4.distilled and not t4.matched
    assert t4.settings(niche)["student"] == {"temperature": 4.0, "epochs": 8}
    # an entry without `like` and an existing name changes that method
    relabelled = niche_methods.from_config({"methods": {"hist_leiden": {"label": "Leiden on H&E"}}})
    assert list(relabelled) == list(niche_methods.METHODS) and relabelled["hist_leiden"].label == "Leiden on H&E"


@pytest.mark.parametrize("entries, message", [
    ({"x": {"like": "nope"}}, "`like: nope` names no method"),
    ({"x": {}}, "a new method needs `like:`"),
    ({"evaluate": {"like": "student"}}, "not one of the study's steps"),
    ({"two words": {"like": "student"}}, "letters, digits and _"),
    ({"x": {"like": "student", "seed": 1}}, "unknown key(s) ['seed']"),
])
def test_bad_variants_are_named(entries, message):
    with pytest.raises(InputError, match="config niche.methods") as err:
        niche_methods.from_config({"methods": entries})
    assert message in str(err.value)


@pytest.mark.parametrize("entry, message", [
    ({"like": "nope"}, "config niche.methods.x: `like: nope` names no method"),
    ({"like": "student", "config": {"student": {"temperature": -1}}}, "config niche.methods.x.config"),
])
def test_a_bad_variant_stops_the_workflow_before_any_job(tmp_path, entry, message):
    workdir = make_workdir(tmp_path, niche__methods={"x": entry})
    result = snakemake("-n", "--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stderr[-2000:]


def test_every_survival_method_is_built_and_reloaded_from_its_entry():
    """build_model calls each entry's factory; a bundle keeps its entry, so a variant's models
    are rebuilt (external cohorts, a distilled method's teacher) without the config."""
    from test_survival_models import FAST, synthetic_cohort

    from tissuekd.survival.train import build_model, bundle_method, cross_validate, load_fold_model, predict_external

    data = synthetic_cohort(n=24)
    for method in survival_methods.METHODS.values():
        assert type(build_model(method.name, data, FAST)) is method.factory()
    variant = survival_methods.from_config({"methods": VARIANTS["survival__methods"]})["pathology_h32"]
    bundle, predictions = cross_validate(variant, data, FAST)
    assert bundle["method"] == "pathology_h32" and bundle_method(bundle) == variant
    assert len(predictions) == len(data.patients)
    assert type(load_fold_model(bundle, 0, 0, data)) is variant.factory()
    assert predict_external(bundle, data).shape == (len(data.patients),)


def evaluate(tmp_path, cells, labels, role, teacher, predictions, **kwargs):
    """niche.evaluate.evaluate_slide on tables written here: `cells` (cell_id, ...), `labels`
    (cell_id, cell_type, ...), each cell's `role`, and the teacher's and each method's niches."""
    from tissuekd.niche.evaluate import evaluate_slide

    cells.to_parquet(tmp_path / "cells.parquet")
    labels.to_parquet(tmp_path / "labels.parquet")
    pd.DataFrame({"cell_id": cells["cell_id"], "role": role}).to_parquet(tmp_path / "split.parquet")
    for name, niche in {"teacher": teacher, **predictions}.items():
        pd.DataFrame({"cell_id": cells["cell_id"], "niche": niche}).to_parquet(tmp_path / f"{name}.parquet")
    return evaluate_slide(str(tmp_path / "cells.parquet"), str(tmp_path / "split.parquet"),
                          str(tmp_path / "teacher.parquet"), {m: str(tmp_path / f"{m}.parquet") for m in predictions},
                          str(tmp_path / "metrics.tsv"), labels=str(tmp_path / "labels.parquet"), slide="s",
                          tissue="t", encoder="e", **kwargs)


def test_evaluation_scores_every_method_of_the_table_it_is_given(tmp_path):
    """A variant of a baseline is Hungarian-matched like it: on the same clusters it scores the same."""
    rng = np.random.default_rng(0)
    n = 400
    teacher = rng.integers(0, 4, n)
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "cell_type": np.array(list("abcd"))[teacher],
                          "x_um": rng.uniform(0, 100, n), "y_um": rng.uniform(0, 100, n)})
    methods = niche_methods.from_config({"methods": {"leiden_again": {"like": "hist_leiden"}}})
    shifted = (teacher + 1) % 4
    table = evaluate(tmp_path, cells, cells[["cell_id", "cell_type"]], "test", teacher,
                     {"student": teacher, "hist_leiden": shifted, "leiden_again": shifted}, k=4,
                     methods=methods).set_index("method")
    assert list(table.index) == ["teacher", "student", "hist_leiden", "leiden_again"]
    # one cell type per teacher niche: matched, the shifted clusters have the teacher's compositions
    assert table.loc["leiden_again", "JSD"] == table.loc["hist_leiden", "JSD"] == pytest.approx(0)
    assert table.loc["leiden_again", "matched_coverage"] == 1.0


def test_evaluation_scores_the_test_strip_only(tmp_path):
    """A student that equals the teacher on the test cells and is noise on the others scores as
    a perfect one: the cells the models trained on (and the buffer) are never scored."""
    rng = np.random.default_rng(1)
    n = 400
    teacher = rng.integers(0, 4, n)
    role = np.array(["test", "train", "buffer", "test"] * (n // 4))
    student = np.where(role == "test", teacher, rng.integers(0, 4, n))
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "cell_type": np.array(list("abcd"))[teacher]})
    table = evaluate(tmp_path, cells, cells, role, teacher, {"student": student}, k=4).set_index("method")
    assert table.loc["student", "ARI"] == pytest.approx(1.0) and table.loc["student", "JSD"] == pytest.approx(0)
    assert table.loc["student", "n_cells"] == n // 2  # the test strip's cells


def test_a_probe_that_cannot_be_fitted_says_why(tmp_path, caplog):
    """A pathology table of one class gave an empty probe_F1 without a word."""
    n = 200
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "cell_type": ["a", "b"] * (n // 2)})
    niches = np.arange(n) % 3
    table = evaluate(tmp_path, cells, cells.assign(pathology="tumour"), "test", niches, {"student": niches}, k=3)
    assert table["probe_F1"].isna().all()
    assert "probe_F1 not computed: it needs two annotated classes of at least 2 cells each on the test strip, " \
           "which has tumour:200" in caplog.text
