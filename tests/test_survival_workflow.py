"""The survival study through Snakemake: the shipped demo (teacher and AMKD student against the
pathology-only baseline), features brought from TRIDENT/CLAM, reruns per slide, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import as_gdc_download, make_workdir, planned_jobs, runtime_table, snakemake, uncounted_jobs

from tissuekd.survival.methods import METHODS

pytestmark = pytest.mark.workflow
SDIR = Path("results/survival/demo_tcga/demo-mobilenet-224")


@pytest.fixture(scope="module")
def survival_run(tmp_path_factory) -> Path:
    """The shipped survival demo: 60 TCGA-like and 24 CPTAC-like patients, niche study off, one
    model per fold instead of the shipped three (`survival.train.members`; CI time). Measured
    2026-12-03 on this configuration: pooled C-index teacher 0.741, student 0.662, pathology
    0.564 (with three members, 0.720 / 0.644 / 0.575)."""
    workdir = make_workdir(tmp_path_factory.mktemp("survival"), studies=("survival",), survival__train__members=1)
    snakemake("--cores", "2", cwd=workdir)
    return workdir


def test_teacher_and_student_beat_the_pathology_baseline_on_the_demo(survival_run):
    """Pooled out-of-fold C-index (60 patients): with 12 per fold the fold SD is ~0.15, so fold
    means differ by chance; pooled, the demo's design (most of the log-hazard in an RNA program
    that H&E shows faintly) gives the teacher a wide margin and the student a smaller one. The
    student's interval is not asserted: whether it excludes zero depends on the draw (README)."""
    table = pd.read_csv(survival_run / "results/benchmark/survival_by_cohort.tsv", sep="\t")
    cv = table[table["validation"] == "cross-validation"].set_index("method")["c_index_pooled"]
    assert cv["teacher"] > cv["pathology"] + 0.05
    assert cv["student"] > cv["pathology"]
    assert (cv > 0.55).all(), cv
    # 95% bootstrap intervals over patients, and the paired difference to pathology-only
    rows = table[table["validation"] == "cross-validation"].set_index("method")
    assert (rows["c_index_low"] < rows["c_index_pooled"]).all()
    assert (rows["c_index_pooled"] < rows["c_index_high"]).all()
    for method in ("teacher", "student", "rna"):
        low, diff, high = rows.loc[method, ["minus_pathology_low", "minus_pathology", "minus_pathology_high"]]
        assert low < diff < high and diff == pytest.approx(cv[method] - cv["pathology"], abs=1e-3)
    external = table[table["validation"] == "external"].set_index("method")["c_index_pooled"]
    assert set(external.index) == set(METHODS)
    assert external["teacher"] > external["pathology"]


def test_every_method_is_scored_on_the_same_folds(survival_run):
    folds = {m: pd.read_csv(survival_run / SDIR / m / "predictions.tsv", sep="\t").set_index("patient")["fold"]
             for m in METHODS}
    reference = folds.pop("teacher")
    assert reference.nunique() == 5 and len(reference) == 60
    for fold in folds.values():
        pd.testing.assert_series_equal(fold.sort_index(), reference.sort_index())
    metrics = pd.read_csv(survival_run / SDIR / "metrics.tsv", sep="\t", dtype={"fold": str})
    assert sorted(metrics["fold"].unique()) == ["0", "1", "2", "3", "4", "pooled"]


def test_features_have_the_trident_layout_and_slides_their_thumbnail(survival_run):
    path = survival_run / "results/survival/features/demo-mobilenet-224/TCGA-DM-A000-01Z-00-DX1.h5"
    with h5py.File(path, "r") as h5:
        assert h5["features"].shape[0] == h5["coords"].shape[0] > 0
        assert h5["coords"].attrs["patch_size"] == 256 and h5["coords"].attrs["target_magnification"] == 20
    assert (survival_run / "results/survival/thumbnails/C3L-00100-21.jpg").stat().st_size > 10_000
    assert (survival_run / SDIR / "km.png").exists()
    assert pd.read_csv(survival_run / SDIR / "dropped.tsv", sep="\t").empty


def test_the_runtime_table_leaves_out_memory_snakemake_measured_for_itself(survival_run):
    """Patches and features are `run:` jobs inside Snakemake's process (whose memory their
    benchmark files report); the cohort tables and the fits run in their own."""
    runtime = runtime_table(survival_run)
    assert uncounted_jobs(survival_run) == 0
    assert runtime.loc["survival_features", "jobs"] == 84
    for rule in ("survival_patches", "survival_features"):
        assert np.isnan(runtime.loc[rule, "max_rss_mb"]), rule
    for rule in ("survival_rna", "survival_cohort", "survival_fit", "survival_student"):
        assert runtime.loc[rule, "max_rss_mb"] > 0, rule


def test_a_changed_slide_reruns_that_slide_and_its_cohort_only(survival_run):
    slide = survival_run / "data/demo/survival/demo_tcga/slides/TCGA-DM-A007-01Z-00-DX1.svs"
    original = slide.read_bytes()
    try:
        slide.write_bytes(original + b"\0")
        jobs = planned_jobs(survival_run)
    finally:
        slide.write_bytes(original)
    assert jobs["survival_patches"] == 1 and jobs["survival_features"] == 1
    assert jobs["survival_cohort"] == 1  # demo_tcga; the external cohort's preparation is untouched
    assert "demo_survival_slide" not in jobs and "survival_rna" not in jobs  # its RNA is read once


def test_changed_gene_sets_rerun_the_methods_that_read_rna_only(survival_run):
    gmt = survival_run / "data/demo/survival/demo_tcga/programs.gmt"
    original = gmt.read_text()
    try:
        gmt.write_text("".join(original.splitlines(keepends=True)[:-1]))  # one set fewer
        jobs = planned_jobs(survival_run)
    finally:
        gmt.write_text(original)
    # teacher and RNA-only, and the student the teacher teaches; not pathology-only
    assert jobs["survival_fit"] == 2 and jobs["survival_student"] == 1, jobs


# ---- features brought from TRIDENT / CLAM: no images, a small cohort ----

def brought_features(tmp_path: Path, n_patients=20, negative_time=False, gdc=False) -> Path:
    """A cohort given as feature files only; one patient's slide has no patches, one clinical
    row has no slide. `gdc`: its RNA (+ 5, linear) as a GDC download (`gdc/`, the sheet's `rna`)
    and its clinical table as GDC's clinical.tsv."""
    rng = np.random.default_rng(0)
    workdir = make_workdir(tmp_path, studies=("survival",), survival__external=[], survival__folds=2,
                           survival__train={"epochs": 2, "hidden": 16, "members": 1, "n_bins": 2})
    patients = [f"TCGA-XY-{i:04d}" for i in range(n_patients)]
    risk = rng.normal(size=n_patients)
    rows = []
    for i, (patient, r) in enumerate(zip(patients, risk)):
        path = tmp_path / "trident" / f"{patient}-01Z-00-DX1.h5"
        path.parent.mkdir(exist_ok=True)
        n = 0 if i == 3 else 6
        with h5py.File(path, "w") as h5:
            h5["features"] = rng.normal(r, 1, (n, 32 if n else 0)).astype("f4")  # no tissue: (0, 0), as ours
            h5["coords"] = np.zeros((n, 2), np.int64)
        rows.append({"slide": path.stem, "cohort": "mine", "patient": patient, "image": "", "mpp": "",
                     "features": str(path)})
    pd.DataFrame(rows).to_csv(workdir / "config/survival_slides.tsv", sep="\t", index=False)
    time = rng.exponential(300 * np.exp(-risk)).round() + 1
    if negative_time:
        time[5] = -3
    clinical = pd.DataFrame({"bcr_patient_barcode": patients + ["TCGA-XY-9999"],
                             "OS": list(rng.integers(0, 2, n_patients)) + [1], "OS.time": list(time) + [100]})
    clinical.loc[:3, "OS"] = 1
    clinical.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    if gdc:  # GDC's clinical.tsv: a row per case and diagnosis, '-- where missing; the last contact of
        # half the alive cases in follow_up.tsv only
        dead, later = clinical["OS"] == 1, clinical.index % 2 == 0
        table = pd.DataFrame({"cases.submitter_id": clinical["bcr_patient_barcode"],
                              "demographic.vital_status": np.where(dead, "Dead", "Alive"),
                              "demographic.days_to_death": clinical["OS.time"].where(dead, "'--"),
                              "diagnoses.days_to_last_follow_up": clinical["OS.time"].where(~dead & ~later, "'--")})
        shorter = table.assign(**{"diagnoses.days_to_last_follow_up": (clinical["OS.time"] / 2).round()})
        pd.concat([table, shorter]).to_csv(tmp_path / "gdc_clinical.tsv", sep="\t", index=False)
        pd.DataFrame({"cases.submitter_id": clinical["bcr_patient_barcode"][~dead & later],
                      "follow_ups.days_to_follow_up": clinical["OS.time"][~dead & later]}).to_csv(
            tmp_path / "follow_up.tsv", sep="\t", index=False)
    rna = pd.DataFrame(rng.normal(size=(n_patients, 12)) + risk[:, None] * (np.arange(12) < 4),
                       index=[p + "-01A" for p in patients], columns=[f"G{j}" for j in range(12)])
    rna.T.to_csv(tmp_path / "rna.tsv", sep="\t")
    rna_path = as_gdc_download(2 ** (rna + 5) - 1, tmp_path / "gdc") if gdc else tmp_path / "rna.tsv"
    clinical_path = tmp_path / ("gdc_clinical.tsv" if gdc else "clinical.tsv")
    pd.DataFrame([{"cohort": "mine", "clinical": str(clinical_path), "rna": str(rna_path),
                   "gene_sets": "", "cross_validate": "yes"}]).to_csv(workdir / "config/survival_cohorts.tsv",
                                                                      sep="\t", index=False)
    return workdir


def test_features_from_trident_or_clam_run_without_images_and_drops_are_listed(tmp_path):
    workdir = brought_features(tmp_path)
    assert "survival_features" not in planned_jobs(workdir)
    snakemake("--cores", "2", cwd=workdir)
    out = workdir / "results/survival/mine/demo-mobilenet-224"
    dropped = pd.read_csv(out / "dropped.tsv", sep="\t")
    assert set(dropped["patient"]) == {"TCGA-XY-0003", "TCGA-XY-9999"}
    assert "no slide in the sheet" in set(dropped["reason"])
    assert len(pd.read_csv(out / "student/predictions.tsv", sep="\t")) == 19
    cohort_log = workdir / "results/logs/survival/cohort/demo-mobilenet-224/mine.log"
    assert "dropped patient TCGA-XY-9999" in cohort_log.read_text()


def test_rna_and_survival_from_gdc_downloads_are_read_and_star_files_are_inputs(tmp_path):
    workdir = brought_features(tmp_path, gdc=True)
    target = "results/survival/mine/demo-mobilenet-224/rna.parquet"
    snakemake("--cores", "1", target, cwd=workdir)
    patients = pd.read_csv(workdir / target.replace("rna.parquet", "patients.tsv"), sep="\t", index_col="patient")
    clinical = pd.read_csv(tmp_path / "clinical.tsv", sep="\t", index_col="bcr_patient_barcode")
    assert patients["time"].tolist() == clinical.loc[patients.index, "OS.time"].tolist()
    assert patients["event"].tolist() == clinical.loc[patients.index, "OS"].tolist()
    given = pd.read_parquet(workdir / target)
    matrix = pd.read_csv(tmp_path / "rna.tsv", sep="\t", index_col=0).T.rename(index=lambda s: s[:-4]) + 5
    np.testing.assert_allclose(given, matrix.loc[given.index, given.columns], atol=1e-3)
    star = sorted((tmp_path / "gdc").glob("*/*.tsv"))[0]
    star.write_text(star.read_text().replace("\t0.", "\t1.", 1))  # a STAR file replaced: its cohort reruns
    assert planned_jobs(workdir, target).get("survival_cohort") == 1
    snakemake("--cores", "1", target, cwd=workdir)
    with open(tmp_path / "follow_up.tsv", "a") as table:  # a later contact: the cohort reruns
        table.write("TCGA-XY-0001\t5000\n")
    assert planned_jobs(workdir, target).get("survival_cohort") == 1
    result = snakemake("-n", "--cores", "1", "--config", "survival={'endpoint': 'PFI'}", cwd=workdir, check=False)
    assert result.returncode != 0  # before any slide is encoded
    assert f"{tmp_path}/gdc_clinical.tsv: a GDC clinical table gives overall survival only" in result.stdout
    star.unlink()
    result = snakemake("-n", "--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"{tmp_path}/gdc/gdc_sample_sheet.2026-12-05.tsv: 1 of its 20 STAR files is in neither "
            f"{tmp_path}/gdc/<File ID>/<File Name> (gdc-client's layout)") in result.stderr + result.stdout


def test_a_clinical_table_the_cohort_job_would_refuse_stops_the_plan(tmp_path):
    """A negative time or a patient listed twice was found by the cohort job, after every slide's
    patches and features."""
    workdir = brought_features(tmp_path, negative_time=True)
    result = snakemake("--cores", "2", cwd=workdir, check=False)
    assert result.returncode != 0
    assert ("survival_cohorts.tsv (cohort mine): " + f"{tmp_path}/clinical.tsv: negative or infinite OS.time for "
            "patient(s) ['TCGA-XY-0005']") in result.stdout + result.stderr
    assert not (workdir / "results").exists()  # no job ran
    table = pd.read_csv(tmp_path / "clinical.tsv", sep="\t")
    table.loc[5, "OS.time"] = 10
    pd.concat([table, table.iloc[[2]]]).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    result = snakemake("-n", "--cores", "2", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "clinical.tsv: patient(s) listed twice: ['TCGA-XY-0002']" in result.stdout + result.stderr


def test_a_bad_rna_matrix_stops_the_run_before_any_slide_is_patched(tmp_path):
    """The cohort's RNA is read by its own job, first: a gene listed twice was found by the cohort
    job, after every slide's patches and features."""
    from tissuekd.demo.survival import make_slide

    workdir = brought_features(tmp_path)
    sheet = pd.read_csv(workdir / "config/survival_slides.tsv", sep="\t").fillna("")
    image = tmp_path / f"{sheet.loc[0, 'slide']}.svs"
    make_slide(image, sheet.loc[0, "patient"], seed=0)
    sheet.loc[0, ["image", "features"]] = [str(image), ""]
    sheet.to_csv(workdir / "config/survival_slides.tsv", sep="\t", index=False)
    assert planned_jobs(workdir)["survival_rna"] == 1
    rna = pd.read_csv(tmp_path / "rna.tsv", sep="\t", index_col=0)
    pd.concat([rna, rna.iloc[[3]]]).to_csv(tmp_path / "rna.tsv", sep="\t")
    result = snakemake("--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "rna.tsv: gene id(s) listed twice: ['G3']" in result.stdout + result.stderr
    assert not (workdir / "results/survival/patches").exists()


def test_a_cohort_whose_patients_are_none_of_its_clinical_tables_stops_the_plan(tmp_path):
    """The sheet's patient column holding slide ids: every slide would be encoded first, then
    every patient dropped."""
    workdir = brought_features(tmp_path)
    sheet = pd.read_csv(workdir / "config/survival_slides.tsv", sep="\t", dtype=str).fillna("")
    sheet["patient"] = sheet["slide"]
    sheet.to_csv(workdir / "config/survival_slides.tsv", sep="\t", index=False)
    result = snakemake("-n", "--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"no patient of cohort mine (e.g. ['TCGA-XY-0000-01Z-00-DX1', 'TCGA-XY-0001-01Z-00-DX1']) is in its "
            f"clinical table {tmp_path}/clinical.tsv (bcr_patient_barcode, e.g. ['TCGA-XY-0000', 'TCGA-XY-0001']): "
            "does the `patient` column hold patient barcodes?") in result.stderr + result.stdout


def test_a_slide_hard_linked_under_another_name_stops_the_plan(tmp_path):
    """Real paths differ for a hard link or a byte copy; their content does not."""
    workdir = make_workdir(tmp_path / "w", studies=("survival",))
    first = tmp_path / "mine-a.svs"
    first.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    os.link(first, tmp_path / "mine-b.svs")
    sheet_path = workdir / "config/survival_slides.tsv"
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str).fillna("")
    mine = pd.concat([sheet.iloc[[0]]] * 2).assign(slide=["mine-a", "mine-b"],
                                                   image=[str(first), str(tmp_path / "mine-b.svs")])
    pd.concat([sheet, mine]).to_csv(sheet_path, sep="\t", index=False)
    result = snakemake("-n", "--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0
    assert (f"survival_slides.tsv line {len(sheet) + 2} (image) and line {len(sheet) + 3} (image) name copies of one "
            f"file: {first} and {tmp_path / 'mine-b.svs'} have one size") in result.stdout + result.stderr


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text().replace("\tdemo_cptac\t", "\tnowhere\t", 1)),
     "cohort(s) ['nowhere'] are not in config/survival_cohorts.tsv"),
    (lambda d: d.joinpath("config/survival_cohorts.tsv").write_text(
        d.joinpath("config/survival_cohorts.tsv").read_text().replace("data/demo/survival/demo_tcga/clinical.tsv",
                                                                      "/nonexistent/clinical.tsv")),
     "column 'clinical' names /nonexistent/clinical.tsv, which does not exist"),
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text() + "# repeated below\n"
        + d.joinpath("config/survival_slides.tsv").read_text().splitlines(keepends=True)[1]),
     "config/survival_slides.tsv lines 2, 87: duplicate slide name 'TCGA-DM-A000-01Z-00-DX1'"),
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text()
        + d.joinpath("config/survival_slides.tsv").read_text().splitlines(keepends=True)[1].replace(
            "TCGA-DM-A000-01Z-00-DX1\t", "copied\t", 1).replace("\tdata/demo/", f"\t{d}/data/demo/", 1)),
     "config/survival_slides.tsv line 2 (image) and line 86 (image) name one file: "
     "data/demo/survival/demo_tcga/slides/TCGA-DM-A000-01Z-00-DX1.svs and /"),  # and by its absolute path
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text().replace(
            "TCGA-DM-A000-01Z-00-DX1\t", "slide01\t", 1).replace("TCGA-DM-A000-01Z-00-DX1.svs",
                                                                  "TCGA-DM-A000-11A-01-TS1.svs", 1)),
     "config/survival_slides.tsv line 2 (slide slide01): data/demo/survival/demo_tcga/slides/"
     "TCGA-DM-A000-11A-01-TS1.svs is a normal-tissue or control sample of TCGA-DM-A000"),
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text().replace("\tdemo_cptac\tC3L-00100\t",
                                                                     "\tdemo_cptac\tTCGA-DM-A000\t", 1)),
     "config survival.external: 1 patient(s) of demo_cptac are also in demo_tcga, which trains the models "
     "(e.g. ['TCGA-DM-A000'])"),
    (lambda d: d.joinpath("config/survival_slides.tsv").write_text(
        d.joinpath("config/survival_slides.tsv").read_text().replace(".svs", ".jpg", 1)),
     "config/survival_slides.tsv line 2: column 'image': data/demo/survival/demo_tcga/slides/"
     "TCGA-DM-A000-01Z-00-DX1.jpg: is a flat picture"),
])
def test_bad_sheets_stop_before_any_job(tmp_path, breakage, message):
    workdir = make_workdir(tmp_path, studies=("survival",))
    breakage(workdir)
    result = snakemake("-n", "--cores", "1", cwd=workdir, check=False)
    assert result.returncode != 0 and message in result.stderr + result.stdout
