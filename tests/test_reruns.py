"""What reruns after a change, judged by Snakemake's own dry run on a copy of the finished demo:
exactly the changed slide's jobs and the aggregates, never another slide's, and nothing
upstream of a changed student setting. Also (on a small slide of its own): a job killed
mid-write leaves nothing trusted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, job_stats, make_workdir, planned_jobs, snakemake

from tissuekd.niche.methods import METHODS

pytestmark = pytest.mark.workflow

AGGREGATES = {"benchmark_niche": 1, "benchmark_runtimes": 1, "all": 1}
STEPS = ("ingest", "labels", "radius", "split", "features", "scvi", "teacher", "evaluate", "maps")
SLIDE_JOBS = {f"niche_{step}": 1 for step in STEPS} | Counter(m.rule for m in METHODS.values())  # a job per method


@pytest.fixture
def run_copy(demo_run, tmp_path) -> Path:
    """A copy of the finished demo workdir (mtimes and Snakemake's metadata kept)."""
    target = tmp_path / "copy"
    shutil.copytree(demo_run, target, symlinks=True)
    return target


def dry_run_slides(workdir: Path, *extra: str) -> tuple[dict[str, int], set[str]]:
    """Planned job counts, and the slides named in the planned jobs' wildcards (one dry run)."""
    out = snakemake("-n", "--cores", "1", *extra, cwd=workdir).stdout
    slides = {line.split("slide=")[1].split(",")[0].strip() for line in out.splitlines() if "slide=" in line}
    return job_stats(out), slides


def test_touched_but_unchanged_inputs_rerun_nothing(run_copy):
    """Snakemake compares checksums of inputs newer than their outputs (profile key max-checksum-file-size)."""
    for path in (run_copy / "data" / "demo" / "breast_demo").rglob("*"):
        if path.is_file():
            path.touch()
    result = snakemake("-n", "--cores", "1", cwd=run_copy)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def planned_resources(workdir: Path, rules: tuple[str, ...], slide: str) -> dict[str, dict[str, str]]:
    """The resources a dry run forcing `rules` lists for each one's job on `slide`."""
    out = snakemake("-n", "--cores", "1", "--forcerun", *rules, cwd=workdir).stdout
    planned = {}
    for rule in rules:
        block = next(b for b in out.split("\n\n") if f"rule {rule}:" in b and f"slide={slide}" in b)
        line = next(ln for ln in block.splitlines() if ln.strip().startswith("resources:"))
        planned[rule] = dict(item.strip().split("=", 1) for item in line.split(":", 1)[1].split(","))
    return planned


def test_resources_follow_the_slides_cell_count(run_copy):
    """A slide with 10x the cells asks more memory and time of the rules after ingest."""
    cells_path = run_copy / "results" / "niche" / "breast_demo" / "cells.parquet"
    cells = pd.read_parquet(cells_path)
    rules = ("niche_radius", "niche_student")
    small = planned_resources(run_copy, rules, "breast_demo")
    big = pd.concat([cells.assign(cell_id=cells["cell_id"] + f"_{i}") for i in range(10)], ignore_index=True)
    big.to_parquet(cells_path)
    large = planned_resources(run_copy, rules, "breast_demo")
    for rule in small:
        assert int(large[rule]["mem_mb"]) > int(small[rule]["mem_mb"]), (rule, small[rule], large[rule])
        assert int(large[rule]["runtime"]) >= int(small[rule]["runtime"])


def _tile_counts(path: Path, member: str, times: int) -> int:
    """The stored counts of an HDF5 matrix made `times` as many (only its header is read while
    planning); returns how many there were."""
    with h5py.File(path, "r+") as h5:
        data = h5[member][:]
        del h5[member]
        h5[member] = np.tile(data, times)
    return len(data)


def test_ingest_and_scvi_memory_follow_the_stored_counts(run_copy):
    """A 5,000-gene panel stores ~10x the counts of the demo's per cell: ingest holds them twice
    (24 B per count measured), scVI once (9 B)."""
    rules = ("niche_ingest", "niche_scvi")
    small = planned_resources(run_copy, rules, "breast_demo")
    stored = {"niche_ingest": _tile_counts(run_copy / "data" / "demo" / "breast_demo" / "outs" /
                                           "cell_feature_matrix.h5", "matrix/data", 10),
              "niche_scvi": _tile_counts(run_copy / "results" / "niche" / "breast_demo" / "expression.h5ad",
                                         "X/data", 10)}
    large = planned_resources(run_copy, rules, "breast_demo")
    for rule, per_count in (("niche_ingest", 30), ("niche_scvi", 12)):
        grown = int(large[rule]["mem_mb"]) - int(small[rule]["mem_mb"])
        assert grown == pytest.approx(per_count * 9 * stored[rule] / 1e6, abs=1), (rule, small[rule], large[rule])


@pytest.mark.parametrize("changed", ["breast_demo/breast_demo_he_image.ome.tif", "breast_demo/outs/cells.parquet"])
def test_changing_one_slides_input_reruns_that_slide_and_the_aggregates(run_copy, changed):
    path = run_copy / "data" / "demo" / changed
    with open(path, "ab") as f:
        f.write(b"\0")
    jobs, slides = dry_run_slides(run_copy)
    assert slides == {"breast_demo"}
    assert jobs == SLIDE_JOBS | AGGREGATES, jobs


def test_changing_one_sheet_row_reruns_that_slide_only(run_copy):
    sheet_path = run_copy / "config" / "niche_slides.tsv"
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str).fillna("")
    moved = run_copy / "alignments" / "colon_he_imagealignment.csv"
    moved.parent.mkdir()
    row = sheet["slide"] == "colon_demo"
    shutil.copy(run_copy / sheet.loc[row, "he_alignment"].iloc[0], moved)
    sheet.loc[row, "he_alignment"] = str(moved)
    sheet.to_csv(sheet_path, sep="\t", index=False)
    jobs, slides = dry_run_slides(run_copy)
    assert slides == {"colon_demo"}
    assert jobs == SLIDE_JOBS | AGGREGATES, jobs


def _edit_first_label(path: Path) -> None:
    table = pd.read_csv(path, dtype=str)
    table.iloc[0, 1] = "edited"
    table.to_csv(path, index=False)


CLUSTERS = "outs/analysis/clustering/gene_expression_graphclust/clusters.csv"


@pytest.mark.parametrize("table", ["pathology.csv", CLUSTERS])
def test_editing_a_slides_annotations_reruns_its_evaluation_and_maps_only(run_copy, table):
    """Cell types, pathology and known niches are read by evaluation and maps alone: an edited
    label must not rerun features, scVI and the models (14 jobs a slide before, hours with a
    foundation encoder)."""
    _edit_first_label(run_copy / "data" / "demo" / "colon_demo" / table)
    jobs, slides = dry_run_slides(run_copy)
    assert slides == {"colon_demo"}
    assert jobs == {"niche_labels": 1, "niche_evaluate": SLIDE_JOBS["niche_evaluate"],
                    "niche_maps": SLIDE_JOBS["niche_maps"]} | AGGREGATES, jobs


def test_renaming_a_tissue_reruns_its_evaluation_and_the_tolerance_reruns_nothing(run_copy):
    sheet_path = run_copy / "config" / "niche_slides.tsv"
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str).fillna("")
    sheet.loc[sheet["slide"] == "colon_demo", "tissue"] = "colon_adenocarcinoma"
    sheet.to_csv(sheet_path, sep="\t", index=False)
    jobs, slides = dry_run_slides(run_copy)
    assert slides == {"colon_demo"}
    assert jobs == {"niche_evaluate": SLIDE_JOBS["niche_evaluate"]} | AGGREGATES, jobs  # maps: the report's group
    sheet.loc[sheet["slide"] == "colon_demo", "tissue"] = "colon"
    sheet.to_csv(sheet_path, sep="\t", index=False)
    result = snakemake("-n", "--cores", "1", "--config", "niche={'he_mpp_tolerance': None}", cwd=run_copy)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_a_new_slide_row_runs_only_the_new_slide(run_copy):
    source = run_copy / "data" / "demo" / "lung_demo"
    new = run_copy / "data" / "site2" / "lung_2"
    shutil.copytree(source, new)
    sheet_path = run_copy / "config" / "niche_slides.tsv"
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str).fillna("")
    row = sheet[sheet["slide"] == "lung_demo"].iloc[0].copy()
    row = row.str.replace("data/demo/lung_demo", str(new), regex=False)
    row["slide"] = "lung_2"
    pd.concat([sheet, row.to_frame().T]).to_csv(sheet_path, sep="\t", index=False)
    jobs, slides = dry_run_slides(run_copy)
    assert slides == {"lung_2"}
    assert jobs == SLIDE_JOBS | AGGREGATES, jobs


def test_a_student_setting_or_forced_student_leaves_features_scvi_and_teacher_alone(run_copy):
    config = yaml.safe_load((run_copy / "config" / "config.yaml").read_text())
    config["niche"]["student"]["temperature"] = 4.0
    (run_copy / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    expected = {"niche_student": 3, "niche_evaluate": 3, "niche_maps": 3} | AGGREGATES
    assert planned_jobs(run_copy) == expected
    assert planned_jobs(run_copy, "--forcerun", "niche_student") == expected


FEATURES = Path("results/niche/features/demo-mobilenet/breast_demo.h5")


@pytest.fixture
def features_run(tmp_path) -> Path:
    """One small slide (1,500 cells) run up to its features file: the kill test needs one
    features job to interrupt and rerun, not the full demo."""
    workdir = make_workdir(tmp_path, slides=("breast",), cells=1500)
    snakemake("--cores", "2", "--", str(FEATURES), cwd=workdir)
    return workdir


def kill_features_job_mid_write(workdir: Path) -> bool:
    """Force the features job, SIGKILL its process group as soon as its partial file appears;
    True when the kill landed mid-write (the partial file is still there)."""
    features = workdir / FEATURES
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--workflow-profile", str(REPO / "profiles" / "default"), "--cores", "2",
           "--forcerun", "niche_features", "--", str(FEATURES)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    partial = None
    deadline = time.monotonic() + 300
    while partial is None and time.monotonic() < deadline and proc.poll() is None:
        partial = next(features.parent.glob(".breast_demo.partial-*.h5"), None)
        time.sleep(0.02)
    assert partial is not None, "the features job never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    snakemake("--unlock", cwd=workdir)
    return partial.exists()


def test_a_job_killed_mid_write_leaves_nothing_trusted(features_run):
    workdir = features_run
    features = workdir / FEATURES
    # On a fast machine the job may finish between seeing its partial file and the kill: try again.
    assert any(kill_features_job_mid_write(workdir) for _ in range(5)), "no kill landed mid-write"
    assert not features.exists()  # removed by Snakemake before the job; the partial file is not it
    jobs, slides = dry_run_slides(workdir, "--", str(FEATURES))
    assert slides == {"breast_demo"} and jobs["niche_features"] == 1
    snakemake("--cores", "2", "--", str(FEATURES), cwd=workdir)
    assert features.exists() and not list(features.parent.glob(".breast_demo.partial-*"))
