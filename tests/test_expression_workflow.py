"""The expression study through Snakemake on its demo (three datasets of two patients in the
HEST layout, plus a third IDC patient as Space Ranger leaves a Visium run): the methods on the
same leave-one-patient-out folds, the tables, what a new sample reruns, and bad sheets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_workdir, planned_jobs, runtime_table, snakemake, snakemake_command, uncounted_jobs

pytestmark = pytest.mark.workflow
METHODS = {"cmrcnet", "contrastive", "ridge", "knn", "random"}


# CMRCNet's epochs halved for CI time (the shipped demo: 20 + 20). Measured 2026-12-02 (fp32,
# AVX2 kernels), HVG r at 10 + 10, cmrcnet / contrastive / ridge / knn / random: COAD .648 / .643
# / .527 / .611 / .017, IDC .653 / .658 / .572 / .616 / .002, LUAD .571 / .562 / .512 / .561 / .005.
FAST = {"stage1_epochs": 10, "stage2_epochs": 10, "top_k": 50}


def expression_workdir(tmp_path: Path) -> Path:
    """The shipped expression demo without its Xenium pseudo-spot rows (those need the niche
    study's ingest; tests/test_expression.py pools an ingested slide instead), CMRCNet at FAST."""
    workdir = make_workdir(tmp_path, studies=("expression",), expression__cmrcnet=FAST)
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet[sheet["format"] != "xenium"].to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    return workdir


@pytest.fixture(scope="module")
def expression_run(tmp_path_factory) -> Path:
    workdir = expression_workdir(tmp_path_factory.mktemp("expression"))
    snakemake("--cores", "2", cwd=workdir)
    return workdir


def hvg(workdir: Path) -> pd.DataFrame:
    table = pd.read_csv(workdir / "results/benchmark/expression_by_dataset.tsv", sep="\t")
    return table[table["gene_list"] == "HVG"].pivot(index="dataset", columns="method", values="pcc_per_sample_mean")


def test_cmrcnet_beats_ridge_and_every_method_beats_random(expression_run):
    """On the demo: CMRCNet's mean HVG r above the HEST ridge baseline on at least two of the
    three datasets, every method well above random retrieval. Measured 2026-12-05 with the
    shipped 20 + 20 epochs (HVG r, cmrcnet / contrastive / ridge / knn / random): COAD .665 /
    .662 / .517 / .611 / .017, IDC .660 / .662 / .563 / .615 / .002, LUAD .595 / .595 / .502 /
    .561 / .005. The issue's other claim, CMRCNet above contrastive-only on two of three, is not
    asserted: the differences are within 0.005 either way on two draws of the demo, though the
    reconstruction now reads the genes (README, "The expression study")."""
    table = hvg(expression_run)
    assert set(table.columns) == METHODS and len(table) == 3
    assert (table["cmrcnet"] > table["ridge"]).sum() >= 2, table
    for method in METHODS - {"random"}:
        assert (table[method] > table["random"] + 0.1).all(), (method, table)


def test_tables_report_both_ways_of_averaging_for_every_gene_list(expression_run):
    table = pd.read_csv(expression_run / "results/benchmark/expression_by_dataset.tsv", sep="\t")
    assert set(table["gene_list"]) == {"HEG", "HVG", "markers"}
    assert table.groupby("dataset")["n_folds"].first().to_dict() == {"COAD": 2, "IDC": 3, "LUAD": 2}
    assert table[["pcc_per_sample_mean", "pcc_pooled_mean", "gene_gene_r_mean"]].notna().all().all()
    overall = pd.read_csv(expression_run / "results/benchmark/expression_overall.tsv", sep="\t")
    assert (overall["n_datasets"] == 3).all() and set(overall["method"]) == METHODS


def test_the_runtime_table_names_the_rules_and_leaves_out_memory_snakemake_measured_for_itself(expression_run):
    """Training jobs run in their own process; the baselines run inside Snakemake's (`run:`)."""
    runtime = runtime_table(expression_run)
    assert uncounted_jobs(expression_run) == 0
    assert runtime.loc["expression_train", "jobs"] == 2 * 7 and runtime.loc["expression_train", "max_rss_mb"] > 0
    assert runtime.loc["expression_baseline", "jobs"] > 0
    assert pd.isna(runtime.loc["expression_baseline", "max_rss_mb"])


def test_a_new_sample_reruns_its_own_jobs_and_its_datasets_folds_only(expression_run):
    sheet = pd.read_csv(expression_run / "config/expression_samples.tsv", sep="\t")
    new = sheet[sheet["sample"] == "IDC_P2"].assign(sample="IDC_P4", patient="IDC-P4")
    for column in ("st", "image", "metadata"):
        new[column] = new[column].str.replace("IDC_P2", "IDC_P4")
    pd.concat([sheet, new]).to_csv(expression_run / "config/expression_samples.tsv", sep="\t", index=False)
    try:
        jobs = planned_jobs(expression_run)
    finally:
        sheet.to_csv(expression_run / "config/expression_samples.tsv", sep="\t", index=False)
    assert jobs["demo_expression_sample"] == 1 and jobs["expression_prepare"] == 1
    assert jobs["expression_features"] == 1 and "expression_patches" not in jobs  # frozen features: no patches
    assert jobs["expression_train"] == 4 * 2 and jobs["expression_baseline"] == 4 * 3  # IDC's 4 folds only
    assert jobs["expression_evaluate"] == 1


def test_fine_tuning_runs_through_the_workflow_on_the_patches_of_each_sample(tmp_path):
    """finetune_blocks > 0: each sample's patches are stored (expression_patches) and CMRCNet's
    fold job trains the encoder's tail on them; the baselines keep the frozen features. One
    dataset (two patients), one fold's model, 2 + 2 epochs: the wiring, not the score
    (tests/test_expression.py checks what is trained and that the test sample stays out)."""
    workdir = make_workdir(tmp_path, studies=("expression",), expression__cmrcnet={
        "stage1_epochs": 2, "stage2_epochs": 2, "top_k": 50, "finetune_blocks": 1})
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet[sheet["dataset"] == "COAD"].to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    jobs = planned_jobs(workdir)
    assert jobs["expression_patches"] == 2 and jobs["expression_features"] == 2 and jobs["expression_train"] == 4
    model = "results/expression/COAD/demo-mobilenet/folds/COAD-P1/cmrcnet/model.pt"
    snakemake("--cores", "2", model, cwd=workdir)
    saved = torch.load(workdir / model)
    assert saved["config"]["finetune_blocks"] == 1 and saved["encoder_tail"]
    assert sorted(p.name for p in (workdir / "results/expression/patches/demo-mobilenet").iterdir()) == [
        "COAD_P1.h5", "COAD_P2.h5"]
    log = (workdir / "results/logs/expression/train/demo-mobilenet/COAD/COAD-P1/cmrcnet.log").read_text()
    assert "fine-tuning the last 1 blocks of demo-mobilenet on the CPU" in log


def test_ctrl_c_stops_a_features_job_running_inside_snakemake(tmp_path):
    """expression_features runs in Snakemake's own threads (a `run:` rule): Ctrl-C used to stop
    the run only once the job had encoded every spot (tissuekd.logs.stop_steps_on_ctrl_c). Its
    sample has ~2,800 spots (a demo sample's eight times over), which takes far longer to encode
    than the interrupt to act; nothing of the job is left."""
    import signal
    import subprocess
    import time

    import anndata as ad

    from tissuekd.demo.expression import make_sample

    workdir = make_workdir(tmp_path, studies=("expression",))
    hest, samples = tmp_path / "hest", ("MANY_P1", "MANY_P2")
    for sample in samples:
        make_sample(hest, sample, "COAD", sample.replace("_", "-"), seed=0)
    one = ad.read_h5ad(hest / "st/MANY_P1.h5ad")
    many = ad.concat({str(copy): one for copy in range(8)}, index_unique="-")  # barcodes <barcode>-<copy>
    many.write_h5ad(hest / "st/MANY_P1.h5ad")
    pd.DataFrame([{"sample": s, "dataset": "MANY", "patient": s.replace("_", "-"), "format": "hest",
                   "st": hest / f"st/{s}.h5ad", "image": hest / f"wsis/{s}.tif",
                   "metadata": hest / f"metadata/{s}.json"} for s in samples]
                 ).to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    features = Path("results/expression/features/demo-mobilenet")
    log = workdir / "results/logs/expression/features/demo-mobilenet/MANY_P1.log"
    # SIGINT as a terminal's Ctrl-C finds it (a background shell may have left it ignored)
    run = subprocess.Popen(snakemake_command("--cores", "2", str(features / "MANY_P1.h5")), cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while run.poll() is None and not (log.exists() and "patches for" in log.read_text()):
        assert time.monotonic() < deadline, "the features job never started"
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()[0][-3000:]
    run.send_signal(signal.SIGINT)
    out = run.communicate(timeout=600)[0]
    assert run.returncode != 0, out[-3000:]
    assert "stopped by Ctrl-C" in log.read_text(), log.read_text()
    assert list(workdir.glob(f"{features}/*")) == []  # no features file, no partial one


def test_a_dataset_with_one_patient_stops_before_any_job(tmp_path):
    workdir = expression_workdir(tmp_path)
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet.loc[sheet["dataset"] == "IDC", "patient"] = "IDC-P1"
    sheet.to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "two patients per dataset at least; dataset(s) ['IDC'] have one" in result.stdout + result.stderr


def test_one_sample_under_two_names_is_refused(tmp_path):
    """A copied row: each copy's fold would train on the other (IDC's ridge HVG r 0.566 -> 0.638)."""
    workdir = expression_workdir(tmp_path)
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t").fillna("")
    copy = sheet[sheet["sample"] == "IDC_P1"].assign(sample="IDC_P4", patient="IDC-P4")
    pd.concat([sheet, copy]).to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    line = 2 + sheet.index[sheet["sample"] == "IDC_P1"][0]
    assert (f"expression_samples.tsv line {line} (st) and line {len(sheet) + 2} (st) name one file, "
            f"{copy['st'].iloc[0]}: one sample under two names") in result.stdout + result.stderr
    st = tmp_path / "copy.h5ad"  # the counts copied too (planning reads no counts): only the shared image tells
    st.touch()
    pd.concat([sheet, copy.assign(st=str(st))]).to_csv(workdir / "config/expression_samples.tsv", sep="\t",
                                                         index=False)
    result = snakemake("-n", cwd=workdir)
    assert (f"expression_samples.tsv lines {line}, {len(sheet) + 2}: samples share the image "
            f"{copy['image'].iloc[0]}") in result.stdout + result.stderr


def test_a_value_outside_the_sheet_schema_names_its_line(tmp_path):
    workdir = expression_workdir(tmp_path)
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet.loc[1, "format"] = "HEST"
    sheet.to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "config/expression_samples.tsv line 3, column 'format': 'HEST' is not one of ['hest', 'visium', 'xenium']" \
        in result.stdout + result.stderr


def test_a_hest_patch_file_replaces_the_image_as_the_features_input(tmp_path):
    """A sheet's `patches` file is what expression_features reads instead of the image
    (tests/test_expression.py checks its features), and then the image and metadata may be
    left out, as HEST-benchmark ships neither; a missing patch file is named before any job."""
    workdir = expression_workdir(tmp_path)
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    (tmp_path / "IDC_P1.h5").write_bytes(b"")
    sheet["patches"] = ""
    p1_row = sheet["sample"] == "IDC_P1"
    sheet.loc[p1_row, "patches"] = str(tmp_path / "IDC_P1.h5")
    sheet.loc[p1_row, ["image", "metadata"]] = ""
    sheet.to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    out = snakemake("-n", "--until", "expression_features", cwd=workdir).stdout
    features = [block for block in out.split("\n\n") if "rule expression_features:" in block]
    p1 = [block for block in features if "sample=IDC_P1\n" in block + "\n"]
    assert len(features) == 7 and len(p1) == 1, out[-3000:]
    assert str(tmp_path / "IDC_P1.h5") in p1[0] and "IDC_P1.tif" not in p1[0]
    prepare = [block for block in out.split("\n\n")
               if "rule expression_prepare:" in block and "sample=IDC_P1\n" in block + "\n"]
    assert len(prepare) == 1 and "IDC_P1.json" not in prepare[0] and "IDC_P1.tif" not in prepare[0], prepare
    (tmp_path / "IDC_P1.h5").unlink()
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert f"(sample IDC_P1): column 'patches' names {tmp_path / 'IDC_P1.h5'}, which does not exist" in (
        result.stdout + result.stderr)


def test_pseudo_spots_need_their_niche_slide_and_only_its_ingest(tmp_path):
    """With the niche study off, pseudo-spot rows still read the niche sheet (they stopped the
    plan, naming a slide the sheet had) and ingest their slides, and nothing else of the niche study
    runs; every row naming a slide the sheet lacks is named, with the ways out."""
    workdir = make_workdir(tmp_path, slides=("breast",), studies=("expression",))
    result = snakemake("-n", cwd=workdir, check=False)
    assert result.returncode != 0
    assert ("config/expression_samples.tsv: pseudo-spot rows name slides that are not in the niche sheet "
            "config/niche_slides.tsv: line 10 (XEN_colon: 'colon_demo'), line 11 (XEN_lung: 'lung_demo'). Add "
            "those slides there") in result.stdout + result.stderr
    assert "turn the expression study off" in result.stdout + result.stderr
    jobs = planned_jobs(make_workdir(tmp_path, slides=("breast", "colon", "lung"), studies=("expression",)))
    assert jobs["niche_ingest"] == 3 and jobs["expression_prepare"] == 10
    assert not [rule for rule in jobs if rule.startswith("niche_") and rule != "niche_ingest"], jobs


def test_a_space_ranger_folder_without_a_file_squidpy_reads_is_named_before_any_job(tmp_path):
    """Prepare reads the matrix, the positions (either name), the scale factors and the two PNGs
    (squidpy.read.visium reads positions only with them): all are its inputs, and a folder
    without one is named with its sheet line when the workflow is planned; one with the MEX
    matrix folder only is told which download it lacks."""
    workdir = expression_workdir(tmp_path)
    outs = tmp_path / "run1/outs"
    (outs / "spatial").mkdir(parents=True)
    needed = ["filtered_feature_bc_matrix.h5", "spatial/tissue_positions_list.csv", "spatial/scalefactors_json.json",
              "spatial/tissue_hires_image.png", "spatial/tissue_lowres_image.png"]
    for name in [*needed, "../he.tif"]:
        (outs / name).write_bytes(b"")
    sheet = pd.read_csv(workdir / "config/expression_samples.tsv", sep="\t")
    sheet.loc[sheet["sample"] == "IDC_P3", ["outs", "image"]] = str(outs), str(tmp_path / "run1/he.tif")
    sheet.to_csv(workdir / "config/expression_samples.tsv", sep="\t", index=False)
    out = snakemake("-n", "--until", "expression_prepare", cwd=workdir).stdout
    prepare = [block for block in out.split("\n\n")
               if "rule expression_prepare:" in block and "sample=IDC_P3\n" in block + "\n"]
    assert len(prepare) == 1 and all(Path(name).name in prepare[0] for name in needed), prepare
    for name, named in (("spatial/tissue_lowres_image.png", "tissue_lowres_image.png"),
                        ("spatial/tissue_positions_list.csv", "tissue_positions.csv (or tissue_positions_list.csv)")):
        (outs / name).unlink()
        result = snakemake("-n", cwd=workdir, check=False)
        assert result.returncode != 0
        assert (f"line 4 (sample IDC_P3): {outs} is not a Space Ranger outs/ folder: no {outs}/spatial/{named}"
                in result.stdout + result.stderr), name
    (outs / "filtered_feature_bc_matrix.h5").unlink()  # a download of the MEX folder only
    (outs / "filtered_feature_bc_matrix").mkdir()
    result = snakemake("-n", cwd=workdir, check=False)
    assert (f"no {outs}/filtered_feature_bc_matrix.h5: its MEX folder filtered_feature_bc_matrix/ is there, but "
            "squidpy.read.visium reads the HDF5 matrix" in result.stdout + result.stderr)


def test_a_xenium_sample_asks_memory_for_its_cells_and_one_chunk_of_counts(tmp_path):
    """Pseudo-spots read a slide's counts a chunk of cells at a time: prepare's ask grows with
    the cells and with one chunk's stored counts, not with the whole counts file (a 1,000,000-cell
    slide of a 5,000-gene panel stores ~10^9 counts: ~8 GB read whole)."""
    import anndata as ad
    import numpy as np
    from scipy import sparse

    workdir = make_workdir(tmp_path, slides=("breast", "colon", "lung"), studies=("niche", "expression"))
    niche = workdir / "results/niche/breast_demo"
    niche.mkdir(parents=True)
    n, per_cell = 200_000, 50
    pd.DataFrame({"cell_id": np.arange(n).astype(str)}).to_parquet(niche / "cells.parquet")
    counts = sparse.csr_matrix((np.ones(n * per_cell, np.float32), np.tile(np.arange(per_cell), n),
                                np.arange(0, n * per_cell + 1, per_cell)), shape=(n, per_cell))
    ad.AnnData(counts).write_h5ad(niche / "expression.h5ad")
    out = snakemake("-n", "--until", "expression_prepare", cwd=workdir).stdout
    block = next(b for b in out.split("\n\n") if "rule expression_prepare:" in b and "sample=XEN_breast\n" in b + "\n")
    chunk = 50_000 * per_cell  # tissuekd.spatial.spots.POOL_CHUNK_CELLS cells' counts
    assert f"mem_mb={round(1000 + 0.5 * n / 1000 + 16 * chunk / 1e6)}," in block, block
