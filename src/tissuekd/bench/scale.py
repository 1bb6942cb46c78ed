"""Scale benchmark: every step after feature extraction at two or more sizes, each in a fresh
process, printing wall time, peak memory and their growth.

Niche: a synthetic slide of N cells (positions at Xenium density, spatial niches, cell types,
d-dim H&E-like features on disk, 10-d scVI-like latents, 300-gene counts) through radius, split,
teacher, student, Histology NOLAN, Histology Leiden, evaluation and maps, and the expression
study's pooling of the slide into pseudo-spots. Survival: a cohort of P
patients x M patches of d-dim fp16 features on disk through `survival_fit` (pathology-only,
5 folds). No H&E is rendered: the steps measured read only these files.

    python -m tissuekd.bench.scale [--cells 20000 100000] [--patients 50 200] [--dim 1536]

Prints, per step: seconds, peak RSS (MB) and, between consecutive sizes, time per cell (or per
patch) and memory ratios. Near-linear time is a per-cell ratio near 1; bounded memory is a
memory ratio well below the size ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tissuekd.io.columns import CELL_ID, X_UM, XY_HE, Y_UM
from tissuekd.niche.methods import METHODS as NICHE_METHODS

NICHE_STEPS = ("radius", "split", "teacher", *NICHE_METHODS, "evaluate", "maps", "pseudospots")
GENES = 300  # the synthetic panel: ~150 counts a cell over 300 genes
DENSITY_UM2 = 120.0  # µm² per cell, about Xenium's in dense tissue
K = 10


def make_slide(folder: Path, n: int, dim: int, seed: int = 0) -> None:
    """cells.parquet, slide.json, latent.parquet and features.h5 (written in chunks) for N cells."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    side = np.sqrt(n * DENSITY_UM2)
    xy = rng.uniform(0, side, (n, 2))
    seeds = rng.uniform(0, side, (8, 2))
    niche = np.argmin(((xy[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)  # 8 Voronoi niches
    mix = rng.dirichlet(np.ones(6) * 0.5, 8)
    ctype = np.array([rng.choice(6, p=mix[v]) for v in niche])
    ids = np.char.add("c", np.arange(n).astype(str))
    pd.DataFrame({CELL_ID: ids, X_UM: xy[:, 0], Y_UM: xy[:, 1], XY_HE[0]: xy[:, 0] / 0.2125,
                  XY_HE[1]: xy[:, 1] / 0.2125}).to_parquet(folder / "cells.parquet")
    pd.DataFrame({CELL_ID: ids, "cell_type": ctype.astype(str),
                  "pathology": np.where(niche < 4, "tumour", "stroma")}).to_parquet(folder / "labels.parquet")
    (folder / "slide.json").write_text(json.dumps({"pixel_size": 0.2125, "affine": np.eye(3).tolist(),
                                                   "he_mpp": 0.2125}))
    type_codes = rng.normal(0, 1, (6, 10))
    latent = type_codes[ctype] + rng.normal(0, 0.5, (n, 10))
    frame = pd.DataFrame(latent.astype(np.float32), columns=[f"z{i}" for i in range(10)])
    frame.insert(0, CELL_ID, ids)
    frame.to_parquet(folder / "latent.parquet")
    basis = rng.normal(0, 1, (16, dim)).astype(np.float32)
    with h5py.File(folder / "features.h5", "w") as h5:
        feats = h5.create_dataset("features", (n, dim), dtype="f4", chunks=(min(n, 1024), dim))
        for start in range(0, n, 65536):
            rows = slice(start, min(n, start + 65536))
            signal = np.zeros((rows.stop - start, 16), np.float32)
            signal[np.arange(len(signal)), ctype[rows]] = 2.0
            signal[np.arange(len(signal)), 6 + niche[rows]] = 1.0
            feats[rows] = signal @ basis + rng.normal(0, 1, (len(signal), dim)).astype(np.float32)
        h5.create_dataset(CELL_ID, data=ids.astype(object), dtype=h5py.string_dtype())


def write_counts(folder: Path, n: int, seed: int = 0) -> None:
    """expression.h5ad: Poisson counts (n cells x GENES, CSR) in the cells' order, as niche_ingest
    writes it (the expression study pools it into pseudo-spots)."""
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(seed)
    chunks = [sparse.csr_matrix(rng.poisson(0.5, (min(65536, n - start), GENES)).astype(np.float32))
              for start in range(0, n, 65536)]
    ids = np.char.add("c", np.arange(n).astype(str))
    ad.AnnData(sparse.vstack(chunks, format="csr"), obs=pd.DataFrame(index=ids),
               var=pd.DataFrame(index=[f"G{g}" for g in range(GENES)])).write_h5ad(folder / "expression.h5ad")


def niche_step(step: str, folder: Path, epochs: int) -> None:
    """One step of the niche study on a synthetic slide (run in a fresh process)."""
    from tissuekd.niche import baselines, evaluate, split, steps
    from tissuekd.niche.train import NolanConfig, StudentConfig

    f = {name: str(folder / name) for name in ("cells.parquet", "labels.parquet", "slide.json", "radius.json",
                                                "split.parquet",
                                                "latent.parquet", "features.h5", "teacher.parquet",
                                                *(f"{m}.parquet" for m in NICHE_METHODS))}
    nolan = NolanConfig(epochs=epochs)
    if step == "pseudospots":  # the expression study's prepare of a Xenium sample (format xenium)
        from tissuekd.expression.pseudospots import read_pseudospots

        read_pseudospots(f["cells.parquet"], str(folder / "expression.h5ad"), f["slide.json"], "scale")
    elif step == "radius":
        split.fit_radius(f["cells.parquet"], f["radius.json"], target=20, n_strips=4, test_strip=1)
    elif step == "split":
        split.write_split(f["cells.parquet"], f["slide.json"], f["radius.json"], f["split.parquet"], crop_px=224,
                          encoder_mpp=0.5)
    elif step == "teacher":
        steps.train_teacher(f["latent.parquet"], f["cells.parquet"], f["radius.json"], K, nolan,
                            str(folder / "teacher.pt"), f["teacher.parquet"], device="cpu")
    elif step in NICHE_METHODS:  # a method's step, as its rule calls it
        rule, out = NICHE_METHODS[step].rule, f[f"{step}.parquet"]
        if rule == "niche_student":
            steps.train_student(f["features.h5"], f["cells.parquet"], f["split.parquet"], f["radius.json"],
                                f["teacher.parquet"], K, StudentConfig(epochs=epochs), str(folder / f"{step}.pt"),
                                out, device="cpu")
        elif rule == "niche_hist_nolan":
            steps.histology_nolan(f["features.h5"], f["cells.parquet"], f["split.parquet"], f["radius.json"], K,
                                  nolan, out, device="cpu")
        elif rule == "niche_hist_leiden":
            baselines.histology_leiden(f["features.h5"], f["cells.parquet"], K, out)
        else:
            raise ValueError(f"method {step}: no scale benchmark for its rule {rule}")
    else:
        predictions = {m: f[f"{m}.parquet"] for m in NICHE_METHODS}
        if step == "evaluate":
            evaluate.evaluate_slide(f["cells.parquet"], f["split.parquet"], f["teacher.parquet"], predictions,
                                    str(folder / "metrics.tsv"), labels=f["labels.parquet"], slide="scale",
                                    tissue="synthetic", k=K, encoder="synthetic")
        else:
            evaluate.plot_maps(f["cells.parquet"], f["split.parquet"], f["teacher.parquet"], predictions,
                               str(folder / "maps.png"), labels=f["labels.parquet"], title="scale")


def make_cohort(folder: Path, patients: int, patches: int, dim: int, seed: int = 0) -> Path:
    """P patients' fp16 feature files and a patients.tsv with 5 stratified folds.

    Parameters
    ----------
    folder : Path
        Written into; feature files already there are kept.
    patients : int
        Patients (one feature file each).
    patches : int
        Patches per patient.
    dim : int
        Feature width.
    seed : int, default 0
        Seed of features, survival and folds.

    Returns
    -------
    Path
        `folder`, with patients.tsv and an empty rna.parquet.
    """
    from tissuekd.survival.cohort import assign_folds

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    risk = rng.normal(size=patients)
    direction = rng.normal(0, 1, dim).astype(np.float32)
    rows = []
    for p in range(patients):
        path = folder / f"P{p:05d}.h5"
        if not path.exists():
            with h5py.File(path, "w") as h5:
                x = rng.normal(0, 1, (patches, dim)).astype(np.float32) + 0.3 * risk[p] * direction
                h5.create_dataset("features", data=x.astype(np.float16), chunks=(min(patches, 512), dim))
                h5.create_dataset("coords", data=np.zeros((patches, 2), np.int64))
        rows.append({"patient": f"P{p:05d}", "time": float(rng.exponential(100 * np.exp(-risk[p])) + 1),
                     "event": int(rng.random() < 0.6), "features": str(path)})
    table = pd.DataFrame(rows)
    table["fold"] = assign_folds(table["event"].to_numpy(), 5, seed)
    table.to_csv(folder / "patients.tsv", sep="\t", index=False)
    pd.DataFrame(index=table["patient"]).to_parquet(folder / "rna.parquet")
    return folder


def survival_step(folder: Path, epochs: int) -> None:
    from tissuekd.survival.steps import train_method

    train_method("pathology", str(folder / "patients.tsv"), str(folder / "rna.parquet"), str(folder / "models.pt"),
                 str(folder / "predictions.tsv"), train={"epochs": epochs, "members": 1, "hidden": 64},
                 device="cpu")


def dag_workdir(folder: Path, xenium: int = 16, survival: int = 1000) -> Path:
    """A working directory whose sheets list `xenium` Xenium slides and `survival` TCGA slides,
    every input a placeholder file (a dry run only checks that they exist) but the clinical table
    and RNA matrix, which planning reads (a row per patient)."""
    import yaml

    repo = Path(__file__).resolve().parents[3]
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config["survival"]["external"] = []
    config["expression"]["enabled"] = config["segmentation"]["enabled"] = False  # the DAG of the two at scale
    data = folder / "inputs"
    rows = []
    for i in range(xenium):
        bundle = data / f"xenium_{i:02d}" / "outs"
        bundle.mkdir(parents=True, exist_ok=True)
        for name in ("experiment.xenium", "cells.parquet", "cell_feature_matrix.h5", "he_image.ome.tif",
                     "he_imagealignment.csv"):
            (bundle / name).touch()
        rows.append({"slide": f"xenium_{i:02d}", "tissue": f"tissue_{i % 8}", "bundle": str(bundle),
                     "he_image": str(bundle / "he_image.ome.tif"),
                     "he_alignment": str(bundle / "he_imagealignment.csv"), "cell_types": "", "pathology": ""})
    (folder / "config").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "config" / "niche_slides.tsv", sep="\t", index=False)
    slides = data / "tcga"
    slides.mkdir(parents=True, exist_ok=True)
    patients = [f"TCGA-XX-{i:04d}" for i in range(survival)]
    rng = np.random.default_rng(0)
    pd.DataFrame({"bcr_patient_barcode": patients, "OS": rng.integers(0, 2, survival),
                  "OS.time": rng.integers(30, 3000, survival)}).to_csv(slides / "clinical.tsv", sep="\t", index=False)
    pd.DataFrame(rng.random((survival, 8)).round(3), index=[f"{p}-01A" for p in patients],
                 columns=[f"GENE{g}" for g in range(8)]).to_csv(slides / "rna.tsv", sep="\t")
    wsi = []
    for i in range(survival):
        image = slides / f"TCGA-XX-{i:04d}-01Z-00-DX1.svs"
        image.touch()
        wsi.append({"slide": image.stem, "cohort": "tcga", "patient": f"TCGA-XX-{i:04d}", "image": str(image),
                    "mpp": "", "features": ""})
    pd.DataFrame(wsi).to_csv(folder / "config" / "survival_slides.tsv", sep="\t", index=False)
    pd.DataFrame([{"cohort": "tcga", "clinical": str(slides / "clinical.tsv"), "rna": str(slides / "rna.tsv"),
                   "gene_sets": "", "cross_validate": "yes"}]).to_csv(folder / "config" / "survival_cohorts.tsv",
                                                                      sep="\t", index=False)
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def dag_seconds(folder: Path) -> tuple[float, int]:
    """Wall time of `snakemake -n` (DAG built, nothing run) and the number of jobs planned."""
    repo = Path(__file__).resolve().parents[3]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile",
                          str(repo / "workflow" / "Snakefile"),
                          "--workflow-profile", str(repo / "profiles" / "default")],
                         cwd=folder, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - start
    total = int(next(ln.split()[1] for ln in out.split("Job stats:")[1].splitlines() if ln.startswith("total")))
    return seconds, total


def measured(call: str, module: str = "tissuekd.bench.scale") -> tuple[float, float]:
    """Run `call` (Python, with the names of `module`) in a fresh process; its wall seconds and
    peak RSS (MB, VmHWM)."""
    code = (f"import logging, sys; logging.disable(logging.INFO); from {module} import *; {call}; "
            "from tissuekd.bench.features import vm_hwm_kb; print('VmHWM', vm_hwm_kb())")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - start
    return seconds, int(out.split("VmHWM")[-1].split()[0]) / 1024


def report(title: str, unit: str, sizes: list[int], rows: dict[str, list[tuple[float, float]]]) -> None:
    print(title)
    head = "".join(f"{s:>10,d} {unit}: s, MB   " for s in sizes)
    print(f"    {'step':12s} {head}  growth (x{sizes[-1] / sizes[0]:.0f} {unit}): time/{unit}, memory")
    for step, values in rows.items():
        cells = "".join(f"{sec:10.1f} s {mb:7.0f} MB " for sec, mb in values)
        (s0, m0), (s1, m1) = values[0], values[-1]
        per = (s1 / sizes[-1]) / (s0 / sizes[0])
        print(f"    {step:12s} {cells}   {per:5.2f}x per {unit}, {m1 / m0:5.2f}x memory")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_scale"))
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--patients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--epochs", type=int, default=1, help="teacher/student/NOLAN passes and survival epochs")
    parser.add_argument("--dag", type=int, default=1000, help="TCGA slides in the dry-run DAG (0: skip)")
    parser.add_argument("--niche-steps", nargs="+", choices=NICHE_STEPS, default=list(NICHE_STEPS),
                        help="the niche steps to measure (in their order; each needs the ones before it)")
    parser.add_argument("--skip-niche", action="store_true")
    parser.add_argument("--skip-survival", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_niche:
        rows: dict[str, list] = {s: [] for s in NICHE_STEPS if s in args.niche_steps}
        for n in args.cells:
            folder = args.workdir / f"niche_{n}_{args.dim}"
            if not (folder / "features.h5").exists():
                make_slide(folder, n, args.dim)
            if not (folder / "expression.h5ad").exists():
                write_counts(folder, n)
            for step in rows:
                rows[step].append(measured(f"niche_step({step!r}, Path({str(folder)!r}), {args.epochs})"))
                print(f"    {n:,d} cells {step}: {rows[step][-1][0]:.1f} s, {rows[step][-1][1]:.0f} MB", flush=True)
        report(f"niche study, {args.dim}-d features, {args.epochs} epoch(s), one process per step:", "cells",
               args.cells, rows)
    if args.dag:
        seconds, jobs = dag_seconds(dag_workdir(args.workdir / "dag", survival=args.dag))
        print(f"DAG: 16 Xenium slides + {args.dag} TCGA slides -> {jobs} jobs planned in {seconds:.1f} s "
              "(snakemake -n, placeholder inputs)")
    if not args.skip_survival:
        rows = {"survival_fit": []}
        for p in args.patients:
            folder = make_cohort(args.workdir / f"cohort_{p}_{args.patches}_{args.dim}", p, args.patches, args.dim)
            rows["survival_fit"].append(measured(f"survival_step(Path({str(folder)!r}), {args.epochs})"))
        report(f"survival_fit (pathology-only, 5 folds), {args.patches} patches x {args.dim}-d fp16 per patient:",
               "patients", args.patients, rows)


if __name__ == "__main__":
    main()
