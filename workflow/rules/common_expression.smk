# Input functions, sheet checks and resources of the expression study (rules/expression.smk); the
# shared ones are in common.smk, which also reads its sheet (its pseudo-spot rows need the niche sheet).
EXPR_FORMAT_COLUMNS = {"hest": ("st", "image", "metadata"), "visium": ("outs", "image"), "xenium": ("niche_slide",)}
EXPR_OPTIONAL_WITH_PATCHES = ("image", "metadata")  # HEST-benchmark ships patches and h5ad only


def spaceranger_files(outs):
    """Space Ranger's files that prepare reads (tissuekd.io.visium.outs_files), as inputs."""
    from tissuekd.io.visium import outs_files

    return {name: str(path) for name, path in outs_files(outs).items()}


def missing_outs_hint(name, file):
    """What to do about a Space Ranger file not there, where the usual cause is known."""
    if name == "positions":
        return " (or tissue_positions_list.csv)"
    mex = file.removesuffix(".h5")  # Space Ranger writes the same matrix as a MEX folder of that name
    if name == "matrix" and os.path.isdir(mex):
        return (
            f": its MEX folder {os.path.basename(mex)}/ is there, but squidpy.read.visium reads the "
            "HDF5 matrix; 10x's download 'Feature / barcode matrix HDF5 (filtered)' is that file"
        )
    return ""


def check_pooled_slides(sheet, path):
    """Pseudo-spot rows must name slides of the niche sheet; every row that does not is named."""
    xenium = sheet[(sheet["format"] == "xenium") & (sheet["niche_slide"] != "")]
    unknown = xenium[~xenium["niche_slide"].isin(SLIDES.index)]
    if len(unknown):
        rows = ", ".join(f"line {i} ({r['sample']}: {r['niche_slide']!r})" for i, r in unknown.iterrows())
        raise WorkflowError(
            f"{path}: pseudo-spot rows name slides that are not in the niche sheet {NICHE['slides']}: {rows}. "
            "Add those slides there, point the rows at its slides or remove them, or turn the expression "
            "study off (expression.enabled: false)"
        )


def check_expression_sheet(sheet, path):
    """Names unique, the format's files present (demo files are made by rules), two patients per
    dataset at least."""
    require_unique(sheet, "sample", path)
    require_distinct_files(
        sheet,
        ("st", "outs", "patches", "niche_slide"),
        path,
        "one sample under two names would be tested on models trained on its copy",
    )
    warn_shared(  # a copied row whose counts file was copied too, most likely
        sheet, "image", path, "samples", " (one sample under two names would be tested on models trained on its copy)"
    )
    check_pooled_slides(sheet, path)
    for row_no, row in zip(sheet.index, sheet.itertuples(index=False)):
        where = f"{path} line {row_no} (sample {row.sample})"
        patches = getattr(row, "patches", "")
        for column in EXPR_FORMAT_COLUMNS[row.format]:
            value = getattr(row, column)
            if not value and patches and column in EXPR_OPTIONAL_WITH_PATCHES:
                continue
            if not value:
                raise WorkflowError(f"{where}: format {row.format} needs {column!r}")
            if column == "niche_slide":
                continue  # check_pooled_slides
            if not os.path.exists(value) and not made_by_demo(value):
                raise WorkflowError(f"{where}: column {column!r} names {value}, {not_there(value)}")
        if row.format == "visium" and not made_by_demo(row.outs):
            for name, file in spaceranger_files(row.outs).items():
                if not os.path.exists(file):
                    raise WorkflowError(
                        f"{where}: {row.outs} is not a Space Ranger outs/ folder: no {file}"
                        + missing_outs_hint(name, file)
                    )
        for column in ("patches", "tissue_seg"):
            value = getattr(row, column, "")
            if value and row.format != "hest":
                raise WorkflowError(f"{where}: column {column!r} is read for format hest only")
            if value and not os.path.exists(value):
                raise WorkflowError(f"{where}: column {column!r} names {value}, {not_there(value)}")
    patients = sheet.groupby("dataset")["patient"].nunique()
    if (patients < 2).any():
        raise WorkflowError(
            f"{path}: leave-one-patient-out needs two patients per dataset at least; "
            f"dataset(s) {patients[patients < 2].index.tolist()} have one"
        )


if EXPRESSION["enabled"]:
    check_expression_sheet(EXPR_SAMPLES, EXPRESSION["samples"])
    EXPR_SAMPLES = EXPR_SAMPLES.set_index("sample", drop=False)
EXPR_DATASETS = sorted(EXPR_SAMPLES["dataset"].unique())
PSEUDO_SPOTS = EXPRESSION["pseudo_spots"]
if PSEUDO_SPOTS["diameter_um"] > PSEUDO_SPOTS["spacing_um"]:  # each cell is pooled into its nearest spot only
    raise WorkflowError(
        f"config expression.pseudo_spots.diameter_um: {PSEUDO_SPOTS['diameter_um']:g} exceeds spacing_um "
        f"{PSEUDO_SPOTS['spacing_um']:g}; pseudo-spots may not overlap (a cell is pooled into one spot)"
    )
if EXPRESSION["enabled"] and set(EXPRESSION["markers"]) - set(EXPR_DATASETS):
    logger.warning(
        f"config expression.markers: dataset(s) {sorted(set(EXPRESSION['markers']) - set(EXPR_DATASETS))} are not "
        f"in {EXPRESSION['samples']} (its datasets: {EXPR_DATASETS}); their markers are not used"
    )
EXPR_TRAINED = [m for m in EXPRESSION["methods"] if m in ("cmrcnet", "contrastive")]
EXPR_BASELINES = [m for m in EXPRESSION["methods"] if m not in EXPR_TRAINED]
XDIR = f"{RESULTS}/expression"


wildcard_constraints:
    sample="|".join(map(re.escape, EXPR_SAMPLES["sample"])) or "NO_SAMPLES",
    task="|".join(map(re.escape, EXPR_DATASETS)) or "NO_DATASETS",


def expression_value(column):
    """Input/param function: one column of the sample's sheet row."""
    return lambda wildcards: EXPR_SAMPLES.loc[wildcards.sample, column]


def expression_sample_inputs(wildcards):
    """The files prepare reads: HEST's three, or Space Ranger's matrix, positions and scale factors."""
    row = EXPR_SAMPLES.loc[wildcards.sample]
    if row["format"] == "hest":  # with a patch file, image and metadata may be absent (HEST-benchmark)
        files = {k: row.get(k, "") for k in ("image", "st", "metadata", "tissue_seg")}
        return {k: v for k, v in files.items() if v}
    if row["format"] == "xenium":
        niche = f"{RESULTS}/niche/{row['niche_slide']}"
        return {
            "image": expression_image(wildcards),
            "cells": f"{niche}/cells.parquet",
            "cell_counts": f"{niche}/expression.h5ad",
            "slide": f"{niche}/slide.json",
        }
    return {"image": row["image"], **spaceranger_files(row["outs"])}


def expression_feature_inputs(wildcards):
    """Spots and scale of the sample, and what the patches come from: the release's patch file
    where the sheet names one, else the H&E."""
    prepared = f"{XDIR}/samples/{wildcards.sample}"
    source = EXPR_SAMPLES.loc[wildcards.sample].get("patches") or ""
    patches = {"patches": source} if source else {"image": expression_image(wildcards)}
    return {"spots": f"{prepared}/spots.parquet", "sample": f"{prepared}/sample.json", **patches}


# a Xenium sample's prepare, measured (python -m tissuekd.bench.scale --niche-steps pseudospots):
# 1,000,000 cells x 118 counts peaked 480 MB above the process's 800, 200,000 x 787 460 MB
PSEUDO_KB_PER_CELL = 0.5
PSEUDO_BYTES_PER_COUNT = 16  # of one chunk of cells (10 measured)


def expression_prepare_mb(wildcards, input, attempt):
    """A sample's prepare (the image's header only is read): a HEST or Space Ranger sample's
    counts file six times over (read whole); a Xenium sample's cells, and its counts one chunk
    of cells at a time (tissuekd.spatial.spots.POOL_CHUNK_CELLS)."""
    if "cell_counts" not in input.keys():
        return round(1000 + 6 * split_bytes(input.get("st") or input.get("matrix")) / 1e6) * attempt
    from tissuekd.spatial.spots import POOL_CHUNK_CELLS

    slide = EXPR_SAMPLES.loc[wildcards.sample, "niche_slide"]  # before its ingest: the bundle's
    cells = slide_cells(input.cells, slide)
    chunk_counts = slide_counts(input.cell_counts, slide) * min(1.0, POOL_CHUNK_CELLS / cells) if cells else 0
    return round(1000 + PSEUDO_KB_PER_CELL * cells / 1000 + PSEUDO_BYTES_PER_COUNT * chunk_counts / 1e6) * attempt


def expression_image(wildcards):
    """The sample's H&E: its own column, or (format xenium) its niche slide's registered image."""
    row = EXPR_SAMPLES.loc[wildcards.sample]
    return SLIDES.loc[row["niche_slide"], "he_image"] if row["format"] == "xenium" else row["image"]


def expression_rows(task):
    return EXPR_SAMPLES[EXPR_SAMPLES["dataset"] == task]


def expression_fold_inputs(wildcards):
    """Every sample of the dataset: its features and expression (the fold's own split is made in the job)."""
    rows = expression_rows(wildcards.task)
    return {
        "features": [f"{XDIR}/features/{wildcards.encoder}/{s}.h5" for s in rows["sample"]],
        "expression": [f"{XDIR}/samples/{s}/expression.h5ad" for s in rows["sample"]],
    }


def expression_train_inputs(wildcards):
    """The fold's inputs, and with fine-tuning (expression.cmrcnet.finetune_blocks > 0) every
    sample's patch file (expression_patches), in the sheet's order."""
    inputs = expression_fold_inputs(wildcards)
    if EXPRESSION["cmrcnet"].get("finetune_blocks", 0):
        rows = expression_rows(wildcards.task)
        inputs["patches"] = [f"{XDIR}/patches/{wildcards.encoder}/{s}.h5" for s in rows["sample"]]
    return inputs


def expression_fold_mb(input):
    """Megabytes a fold job holds: its features and expression (patch files are read a batch at a time)."""
    return sum(split_bytes(f) for f in [*input.features, *input.expression]) / 1e6


def expression_train_mb(wildcards, input, attempt):
    """A trained method's fold: its features and expression three times over, and with
    fine-tuning the encoder too (as a features job holds it, less that job's crop reader)."""
    tuning = encoder_mem_mb(wildcards, 1) - 3000 if EXPRESSION["cmrcnet"].get("finetune_blocks", 0) else 0
    return round(2000 + 3 * expression_fold_mb(input) + tuning) * attempt


def expression_fold_params(wildcards):
    rows = expression_rows(wildcards.task)
    return {"samples": list(rows["sample"]), "patients": list(rows["patient"])}


def expression_folds(task):
    """Fold names: the dataset's patients (leave-one-patient-out)."""
    return sorted(expression_rows(task)["patient"].unique())


def expression_summaries(wildcards):
    return [
        f"{XDIR}/{wildcards.task}/{wildcards.encoder}/folds/{fold}/{method}/summary.tsv"
        for fold in expression_folds(wildcards.task)
        for method in EXPRESSION["methods"]
    ]


def expression_map_inputs(wildcards):
    """The first method's predictions of every fold, and every sample's spots and expression."""
    samples = expression_rows(wildcards.task)["sample"]
    method = EXPRESSION["methods"][0]
    return {
        "predictions": [
            f"{XDIR}/{wildcards.task}/{wildcards.encoder}/folds/{fold}/{method}/predictions.parquet"
            for fold in expression_folds(wildcards.task)
        ],
        "spots": [f"{XDIR}/samples/{s}/spots.parquet" for s in samples],
        "expression": [f"{XDIR}/samples/{s}/expression.h5ad" for s in samples],
    }


def expression_metrics():
    return expand(f"{XDIR}/{{task}}/{{encoder}}/metrics.tsv", task=EXPR_DATASETS, encoder=EXPRESSION_ENCODERS)


def expression_benchmarks():
    """Benchmark files of every expression job, for the runtime table (the rules' own patterns)."""
    if not EXPRESSION["enabled"]:
        return []
    bench = lambda rule: str(getattr(rules, rule).benchmark)  # noqa: E731
    files = expand(bench("expression_prepare"), sample=EXPR_SAMPLES["sample"])
    files += expand(bench("expression_features"), encoder=EXPRESSION_ENCODERS, sample=EXPR_SAMPLES["sample"])
    files += expand(bench("expression_maps"), encoder=EXPRESSION_ENCODERS, task=EXPR_DATASETS)
    files += expand(bench("expression_evaluate"), encoder=EXPRESSION_ENCODERS, task=EXPR_DATASETS)
    for task in EXPR_DATASETS:
        for rule, methods in (("expression_train", EXPR_TRAINED), ("expression_baseline", EXPR_BASELINES)):
            files += expand(
                bench(rule), encoder=EXPRESSION_ENCODERS, task=task, fold=expression_folds(task), method=methods
            )
    return files
