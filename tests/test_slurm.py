"""The shipped SLURM profile against a real one-node SLURM cluster (tests/slurm/cluster.py):
every job runs as a SLURM job and gives the results of a local run; changing one slide's input
plans only that slide's jobs and the aggregates; a failing job is retried, then the run stops
naming the rule, the slide and the SLURM log."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, make_workdir, planned_jobs, snakemake

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cluster import LocalSlurm, missing_reason  # noqa: E402

FAST_POLL = Path(__file__).parent / "slurm" / "snakemake_fast_poll.py"  # status checks every 2 s

pytestmark = [pytest.mark.workflow, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

# a small demo: two slides of 1,500 cells, K=10, short training
SMALL = dict(cells=1500, niche__k=[10], niche__scvi__max_epochs=5, niche__nolan__epochs=1, niche__student__epochs=2)
# the test cluster polls fast and has no accounts; its node declares 8 CPUs on 2 real cores, so
# the GPU rules keep one thread (the profile's set-threads is for real GPU nodes)
GPU_THREADS = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-threads"]
TEST_FLAGS = ["--slurm-init-seconds-before-status-checks", "1", "--slurm-no-account",
              "--set-threads", *(f"{rule}=1" for rule in GPU_THREADS)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield slurm
    slurm.stop()


def on_slurm(workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return snakemake("--profile", str(REPO / "profiles" / "slurm"), *TEST_FLAGS, *extra, cwd=workdir, check=check,
                     entry=(str(FAST_POLL),))


def submitted(cluster: LocalSlurm, since: set[str]) -> list[dict]:
    """Jobs submitted after the job ids in `since`, with rule and wildcards from the comment and
    `max_rss_mb`, the largest peak memory of its steps."""
    fields = ("JobID", "State", "ReqMem", "TimelimitRaw", "AllocCPUS", "AllocTRES", "Comment", "MaxRSS")
    rows, peaks = [], {}
    for row in cluster.sacct(*fields, steps=True):  # a job's row, then its steps' (`<job>.batch`, `<job>.0`)
        job = row["JobID"].split(".")[0]
        peaks[job] = max(peaks.get(job, 0), rss_mb(row["MaxRSS"]))
        if "." not in row["JobID"] and job not in since:
            rows.append(row)
    for row in rows:  # the plugin's comment: rule_<rule>_wildcards_<wildcard values joined by _>
        rule, _, wildcards = row["Comment"].removeprefix("rule_").partition("_wildcards_")
        row["rule"], row["wildcards"], row["max_rss_mb"] = rule, wildcards, peaks.get(row["JobID"], 0)
    return rows


def rss_mb(value: str) -> float:
    """sacct's MaxRSS (`708572K`, `1.2G`, blank for the job's own row) in its M, as ReqMem's
    (SLURM's units are binary: K = KiB, M = MiB)."""
    if not value:
        return 0
    scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(value[-1])
    return float(value[:-1]) * scale if scale else float(value) / 2**20


def metrics(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / "benchmark" / "summary.tsv", sep="\t")


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("on_slurm"), **SMALL)
    before = {r["JobID"] for r in cluster.sacct("JobID")}
    on_slurm(workdir)
    return workdir, submitted(cluster, before)


def test_every_rule_runs_as_a_completed_slurm_job(slurm_run):
    workdir, jobs = slurm_run
    planned = planned_jobs(workdir, "--forceall")
    assert len(jobs) == sum(planned.values()) - planned["all"]  # all, the only local rule, runs no job
    assert {j["State"] for j in jobs} == {"COMPLETED"}
    rules = {j["rule"] for j in jobs}
    assert {"niche_features", "niche_scvi", "niche_teacher", "niche_student", "benchmark_niche"} <= rules
    # CPUs: a GPU job its cpus_per_gpu (4), a CPU job its threads (1); a default cpus_per_task had
    # overridden both (2 each)
    for job in jobs:
        assert job["AllocCPUS"] == ("4" if job["rule"] in GPU_THREADS else "1"), job
        assert ("gres/gpu=1" in job["AllocTRES"]) == (job["rule"] in GPU_THREADS), job


def test_every_job_stays_within_the_memory_it_asked(slurm_run):
    """Each job's peak memory, as SLURM's accounting recorded it for its steps (the plugin's
    srun step runs Snakemake and the job), is below its mem_mb ask: the asks hold on a real
    scheduler, where a job above its ask is killed."""
    _, jobs = slurm_run
    measured = [j for j in jobs if j["max_rss_mb"] > 0]
    assert len(measured) == len(jobs), [j for j in jobs if j not in measured]
    for job in jobs:
        assert job["max_rss_mb"] < int(job["ReqMem"].rstrip("M")), job


def test_the_workflow_profile_leaves_cluster_jobs_threads_uncapped():
    """profiles/default applies under --profile profiles/slurm too (as the workflow profile, its keys
    win), and Snakemake caps every job's threads at --cores and passes it into each cluster job: a
    `cores: 2` there ran the GPU rules' 4 threads as 2. (A dry run cannot show it: it sets cores to 1.)"""
    workflow_profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert not {"cores", "c", "max-threads"} & set(workflow_profile)
    assert "cpus_per_task" not in yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text()
                                                 )["default-resources"]


def test_slurm_results_equal_a_local_run(slurm_run, tmp_path):
    workdir, _ = slurm_run
    local = make_workdir(tmp_path, slides=("colon",), **SMALL)  # one slide suffices: slides are independent
    snakemake("--cores", "2", cwd=local)
    on_cluster = metrics(workdir)
    on_cluster = on_cluster[on_cluster["slide"] == "colon_demo"].reset_index(drop=True)
    pd.testing.assert_frame_equal(on_cluster, metrics(local), rtol=1e-4)


def test_changing_one_slide_plans_only_that_slide_and_the_aggregates(slurm_run):
    """The SLURM profile's rerun decision (a dry run through it: what would be submitted; the
    local rerun tests run the same changes for real; a real SLURM run submits the chain one DAG
    level at a time: the two-slide run took 3.5 min on 2 cores with another workflow beside it)."""
    workdir, _ = slurm_run
    with open(workdir / "data" / "demo" / "colon_demo" / "colon_demo_he_image.ome.tif", "ab") as f:
        f.write(b"\0")
    out = on_slurm(workdir, "-n").stdout
    jobs = [line.split("rule ")[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")]
    slides = {line.split("slide=")[1].split(",")[0].strip() for line in out.splitlines() if "slide=" in line}
    assert slides == {"colon_demo"}, out[-2000:]
    per_slide = [j for j in jobs if j.startswith("niche_")]
    assert len(per_slide) == 12  # ingest, labels ... maps, K=10
    assert set(jobs) - set(per_slide) <= {"benchmark_niche", "benchmark_runtimes", "all"}


def test_a_failing_job_is_retried_then_named_with_its_slurm_log(cluster, slurm_run, tmp_path):
    workdir = make_workdir(tmp_path, slides=("breast",), **SMALL)
    demo = Path("data") / "demo" / "breast_demo"  # the same demo slide: no SLURM job to remake it
    shutil.copytree(slurm_run[0] / demo, workdir / demo)
    sheet = pd.read_csv(workdir / "config" / "niche_slides.tsv", sep="\t", dtype=str).fillna("")
    bad = workdir / "shifted_alignment.csv"
    affine = np.loadtxt(workdir / demo / "breast_demo_he_imagealignment.csv", delimiter=",")
    affine[0, 2] += 90000  # maps every cell off the H&E: ingest fails
    np.savetxt(bad, affine, delimiter=",")
    sheet["he_alignment"] = str(bad)
    sheet.to_csv(workdir / "config" / "niche_slides.tsv", sep="\t", index=False)
    before = {r["JobID"] for r in cluster.sacct("JobID")}
    result = on_slurm(workdir, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule niche_ingest" in text and "slide=breast_demo" in text
    assert "results/logs/slurm" in text  # the SLURM log of the failed job is named
    ingest = [j for j in submitted(cluster, before) if j["rule"] == "niche_ingest"]
    assert len(ingest) == 3 and {j["State"] for j in ingest} == {"FAILED"}  # retries: 2
    first = int(ingest[0]["ReqMem"].rstrip("M"))  # mem_mb follows the slide's cells, times the attempt
    assert first >= 2000 and [j["ReqMem"] for j in ingest] == [f"{first * a}M" for a in (1, 2, 3)]
    minutes = int(ingest[0]["TimelimitRaw"])  # and so does its time limit
    assert [j["TimelimitRaw"] for j in ingest] == [str(minutes * a) for a in (1, 2, 3)]
