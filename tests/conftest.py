"""Shared fixtures: one small demo slide in the real Xenium layout, generated once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_slide(tmp_path_factory) -> Path:
    """A breast demo slide of ~2,500 cells: its folder holds outs/, the H&E and its alignment."""
    from tissuekd.demo.xenium import make_demo_slide

    outdir = tmp_path_factory.mktemp("demo") / "breast_demo"
    make_demo_slide(outdir, "breast", n_cells=2500, seed=3)
    return outdir


@pytest.fixture
def bundle_copy(demo_slide, tmp_path) -> Path:
    """A writable copy of the demo slide, for tests that break it."""
    target = tmp_path / demo_slide.name
    shutil.copytree(demo_slide, target)
    return target


@pytest.fixture(scope="session")
def ingested(demo_slide, tmp_path_factory) -> dict:
    """The demo slide after the ingest step (cells.parquet, expression.h5ad, slide.json)."""
    from tissuekd.niche.ingest import ingest_slide

    out = tmp_path_factory.mktemp("ingested")
    paths = {k: out / n for k, n in [("cells", "cells.parquet"), ("expression", "expression.h5ad"),
                                     ("slide", "slide.json")]}
    ingest_slide(str(demo_slide / "outs"), str(he_image(demo_slide)), str(he_alignment(demo_slide)),
                 str(paths["cells"]), str(paths["expression"]), str(paths["slide"]))
    return paths


def pytest_itemcollected(item):
    """Under pytest-xdist (`--dist=loadgroup`, pyproject's addopts) the tests that use the
    full demo run share one worker, so it runs once; the others stay with their module's
    tests, whose module-scoped runs (SLURM, survival) then also run once. (Marked as each
    test is collected, before any collection_modifyitems hook, xdist's included.)"""
    item.add_marker(pytest.mark.xdist_group(_group(item)))


def _group(item) -> str:
    return "demo_run" if "demo_run" in item.fixturenames else item.module.__name__


# The long groups first, about longest first (pyproject: --no-loadscope-reorder keeps this order):
# xdist gives each worker one group and the next one as it nears its end, so the two workers stay
# about equally loaded. Seconds per group in CI on 74893a6 (2026-12-03; what runs beside a group
# moves it by ~100 s): demo_run 636, survival 481, segmentation 447, expression 396, SLURM 368;
# every other module under 150.
LONG_GROUPS = ("demo_run", "test_survival_workflow", "test_expression_workflow", "test_segmentation_workflow",
               "test_slurm")


def pytest_configure(config):
    """One torch thread per pytest worker: two workers with torch's default (a thread per
    core) and the workflows' jobs beside them oversubscribed two cores (a 26 s model test took 158 s)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: order kept within a rank


def as_mex(bundle: Path) -> None:
    """Replace a bundle's cell_feature_matrix.h5 by the same matrix as 10x's MEX folder
    (cell_feature_matrix/: matrix.mtx.gz genes x cells, features.tsv.gz, barcodes.tsv.gz)."""
    import gzip

    import h5py
    from scipy import io, sparse

    with h5py.File(bundle / "cell_feature_matrix.h5") as h5:
        m = h5["matrix"]
        counts = sparse.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
        features = zip(*(m[f"features/{key}"][:].astype(str) for key in ("id", "name", "feature_type")))
        barcodes = m["barcodes"][:].astype(str)
    folder = bundle / "cell_feature_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        io.mmwrite(fh, counts.tocoo())
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.writelines("\t".join(row) + "\n" for row in features)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{b}\n" for b in barcodes)
    (bundle / "cell_feature_matrix.h5").unlink()


def he_image(slide_dir: Path) -> Path:
    return slide_dir / f"{slide_dir.name}_he_image.ome.tif"


def he_alignment(slide_dir: Path) -> Path:
    return slide_dir / f"{slide_dir.name}_he_imagealignment.csv"


def snakemake_command(*args: str, entry: tuple[str, ...] = ("-m", "snakemake")) -> list[str]:
    """The real Snakemake CLI (`python <entry>`) on this repository's workflow and profile."""
    return [sys.executable, *entry, "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--workflow-profile", str(REPO / "profiles" / "default"), *args]


def snakemake(*args: str, cwd: Path, check: bool = True, entry: tuple[str, ...] = ("-m", "snakemake"),
              timeout: float | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `snakemake_command(*args)` from `cwd` (`timeout`: seconds before it counts as hanging;
    `env`: variables set on top of this process's)."""
    cmd = snakemake_command(*args, entry=entry)
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **env} if env else None)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


ALL_SLIDES = ("breast", "colon", "lung")


def make_workdir(tmp_path: Path, slides=("breast", "colon"), cells: int | None = 3000, studies=("niche",),
                 **overrides) -> Path:
    """A working directory with the repository's config and sheets, only `studies` enabled, a
    niche sheet of demo `slides`, and overrides (`cells=None`: the shipped demo's slide size)."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for study in ("niche", "survival", "segmentation", "expression"):
        config[study]["enabled"] = study in studies
    for sheet in ("survival_cohorts.tsv", "survival_slides.tsv", "segmentation_datasets.tsv", "expression_samples.tsv"):
        shutil.copy(REPO / "config" / sheet, tmp_path / "config" / sheet)
    if cells:
        config["demo"]["niche_cells"] = cells
    for dotted, value in overrides.items():
        *parents, key = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[key] = value
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    sheet = pd.read_csv(REPO / "config" / "niche_slides.tsv", sep="\t", dtype=str).fillna("")
    sheet = sheet[sheet["tissue"].isin(slides)]
    sheet.to_csv(tmp_path / "config" / "niche_slides.tsv", sep="\t", index=False)
    return tmp_path


def runtime_table(workdir: Path) -> pd.DataFrame:
    """A finished run's runtime table (rule benchmark_runtimes), indexed by rule."""
    return pd.read_csv(workdir / "results" / "benchmark" / "runtime.tsv", sep="\t").set_index("rule")


def uncounted_jobs(workdir: Path) -> int:
    """Benchmark files the runtime table did not count: every job of a study must be in it (the
    demo's data rules and the benchmark tables' own are left out by design)."""
    files = [p for p in (workdir / "results" / "benchmarks").rglob("*.tsv")
             if p.relative_to(workdir / "results" / "benchmarks").parts[0] not in ("demo", "benchmark")]
    return len(files) - int(runtime_table(workdir)["jobs"].sum())


def planned_jobs(workdir: Path, *extra: str) -> dict[str, int]:
    """Job counts from a dry run's own summary table."""
    return job_stats(snakemake("-n", "--cores", "1", *extra, cwd=workdir).stdout)


def job_stats(out: str) -> dict[str, int]:
    """Job counts from a dry run's output (its summary table; none when nothing is to be done)."""
    if "Job stats:" not in out and "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {parts[0]: int(parts[1]) for line in table.splitlines() if len(parts := line.split()) == 2
            and parts[1].isdigit()}


DEMO_TEST_CELLS = 10000  # at least: the shipped demo's slides (~12,800 cells); at 6,000 and 7,000 the check failed


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The shipped demo (three full-size slides) at K=10 only: the science check's configuration.
    Measured 2026-11-23: at 6,000 cells per slide the colon slide's student fell below Leiden
    (ARI 0.14 vs 0.19); 2026-12-03, at 7,000, below 2x Leiden (0.27 vs 0.31): so the check runs
    on the shipped size."""
    workdir = make_workdir(tmp_path_factory.mktemp("run"), slides=ALL_SLIDES, cells=None, niche__k=[10])
    snakemake("--cores", "2", cwd=workdir)
    return workdir


STAR_HEADER = ["gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
               "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded"]


def as_gdc_download(rna: pd.DataFrame, folder: Path, flat: bool = False) -> Path:
    """Samples x genes (linear values) written as the GDC portal hands RNA-seq out: one STAR
    gene-count file per sample at `<File ID>/<File Name>` (`flat`: beside the sheet), the values
    as `tpm_unstranded` beside other columns, STAR's read summaries, a `_PAR_Y` copy; and the
    cart's sample sheet, which also lists a slide. Returns the sheet's path."""
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (sample, values) in enumerate(rna.iterrows()):
        file_id, name = str(uuid.UUID(int=n + 1)), f"{uuid.UUID(int=1000 + n)}.rna_seq.augmented_star_gene_counts.tsv"
        genes = pd.DataFrame({"gene_id": [f"ENSG{j:011d}.{j % 7 + 1}" for j in range(len(values))],
                              "gene_name": rna.columns, "gene_type": "protein_coding",
                              "unstranded": (values * 10).round(), "stranded_first": (values * 5).round(),
                              "stranded_second": (values * 5).round(), "tpm_unstranded": values.round(4),
                              "fpkm_unstranded": (values / 3).round(4), "fpkm_uq_unstranded": (values / 2).round(4)})
        par_y = genes.iloc[:1].assign(gene_id=lambda t: t["gene_id"] + "_PAR_Y", unstranded=0, tpm_unstranded=0.0)
        summaries = pd.DataFrame({"gene_id": ["N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"],
                                  "unstranded": [81, 44, 14, 55], "stranded_first": [81, 44, 245, 14],
                                  "stranded_second": [81, 44, 247, 14]})
        path = folder / name if flat else folder / file_id / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "w") as fh:
            fh.write("# gene-model: GENCODE v36\n")
            pd.concat([summaries, genes, par_y])[STAR_HEADER].to_csv(fh, sep="\t", index=False)
        rows.append([file_id, name, "Transcriptome Profiling", "Gene Expression Quantification", "TCGA-XY",
                     sample.rsplit("-", 1)[0], sample, "Tumor" if sample[-3] == "0" else "Normal", "Primary",
                     "Solid Tissue", "Unknown"])
    rows.append([str(uuid.UUID(int=9999)), "TCGA-XY-0000-01Z-00-DX1.svs", "Biospecimen", "Slide Image", "TCGA-XY",
                 "TCGA-XY-0000", "TCGA-XY-0000-01Z", "Tumor", "Primary", "Solid Tissue", "FFPE"])
    sheet = folder / "gdc_sample_sheet.2026-12-05.tsv"
    pd.DataFrame(rows, columns=["File ID", "File Name", "Data Category", "Data Type", "Project ID", "Case ID",
                                "Sample ID", "Tissue Type", "Tumor Descriptor", "Specimen Type",
                                "Preservation Method"]).to_csv(sheet, sep="\t", index=False)
    return sheet
