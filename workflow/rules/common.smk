# Sheets, validation beyond the schemas, and input functions shared by the rules.
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError

from tissuekd.encoders.registry import EncoderSpec
from tissuekd.errors import InputError

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
DEMO_DIR = config["demo"]["outdir"]
CLUSTERS = "analysis/clustering/gene_expression_graphclust/clusters.csv"
SLIDE_PATH_COLUMNS = ["bundle", "he_image", "he_alignment", "cell_types", "pathology"]


def load_sheet(path, schema):
    """A tab-separated sample sheet, validated against its schema (defaults filled)."""
    if not os.path.exists(path):
        raise WorkflowError(f"sample sheet {path} does not exist (config key niche.slides)")
    sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#").fillna("")
    sheet.columns = sheet.columns.str.strip()
    validate(sheet, schema)
    return sheet


def made_by_demo(path):
    """Demo inputs do not exist until the demo rules write them."""
    return Path(path).resolve().is_relative_to(Path(DEMO_DIR).resolve())


def check_slide_rows(sheet, sheet_path):
    dupes = sheet["slide"][sheet["slide"].duplicated()].tolist()
    if dupes:
        raise WorkflowError(f"{sheet_path}: duplicate slide name(s) {dupes}")
    for row_no, row in enumerate(sheet.itertuples(index=False), start=2):
        where = f"{sheet_path} line {row_no} (slide {row.slide})"
        if NICHE["teacher"] == "external" and not row.teacher_logits:
            raise WorkflowError(f"{where}: niche.teacher is 'external' but the row has no teacher_logits")
        for column in SLIDE_PATH_COLUMNS:
            path = getattr(row, column)
            if path and not os.path.exists(path) and not made_by_demo(path):
                raise WorkflowError(f"{where}: column {column!r} names {path}, which does not exist")
        if not made_by_demo(row.bundle):
            check_bundle(row.bundle, where)


def check_bundle(bundle, where):
    """A Xenium bundle must hold what ingest reads; say which file is missing."""
    bundle = Path(bundle)
    needed = [["experiment.xenium"], ["cells.parquet", "cells.csv.gz"], ["cell_feature_matrix.h5"]]
    for names in needed:
        if not any((bundle / n).exists() for n in names):
            raise WorkflowError(f"{where}: the Xenium bundle {bundle} has no {' or '.join(names)}")


def load_encoders(names):
    specs = {}
    for name in names:
        if name not in config["encoders"]:
            raise WorkflowError(
                f"config niche.encoders: unknown encoder {name!r}; define it under `encoders:` "
                f"(defined: {sorted(config['encoders'])})"
            )
        try:
            spec = EncoderSpec.from_config(name, config["encoders"][name])
        except InputError as err:
            raise WorkflowError(str(err)) from None
        if spec.weights != "random" and not os.path.exists(spec.weights):
            raise WorkflowError(f"config encoders.{name}.weights: {spec.weights} does not exist")
        specs[name] = spec
    return specs


NICHE = config["niche"]
SLIDES = pd.DataFrame(columns=["slide"])
if NICHE["enabled"]:
    SLIDES = load_sheet(NICHE["slides"], "../schemas/niche_slides.schema.yaml")
    check_slide_rows(SLIDES, NICHE["slides"])
    SLIDES = SLIDES.set_index("slide", drop=False)
ENCODERS = load_encoders(NICHE["encoders"]) if NICHE["enabled"] else {}


wildcard_constraints:
    slide="|".join(map(re.escape, SLIDES["slide"])) or "NO_SLIDES",
    encoder="|".join(map(re.escape, ENCODERS)) or "NO_ENCODERS",
    k=r"\d+",


def slide_value(column):
    """Input/param function: one column of the slide's sheet row."""
    return lambda wildcards: SLIDES.loc[wildcards.slide, column]


def xenium_inputs(wildcards):
    """The bundle files ingest reads; the cell table is parquet, else csv.gz (XOA 1.x)."""
    row = SLIDES.loc[wildcards.slide]
    bundle = Path(row["bundle"])
    cells = bundle / "cells.parquet"
    if not cells.exists() and (bundle / "cells.csv.gz").exists():
        cells = bundle / "cells.csv.gz"
    inputs = {
        "experiment": bundle / "experiment.xenium",
        "cells": cells,
        "matrix": bundle / "cell_feature_matrix.h5",
        "he_image": row["he_image"],
        "he_alignment": row["he_alignment"],
    }
    for optional in ("cell_types", "pathology"):
        if row[optional]:
            inputs[optional] = row[optional]
    if not row["cell_types"] and ((bundle / CLUSTERS).exists() or made_by_demo(bundle)):
        inputs["clusters"] = bundle / CLUSTERS
    return {k: str(v) for k, v in inputs.items()}


def niche_predictions(wildcards):
    """Everything evaluation and maps compare: the teacher, the student and both baselines."""
    kdir = f"{RESULTS}/niche/{wildcards.slide}/{wildcards.encoder}/k{wildcards.k}"
    return {
        "cells": f"{RESULTS}/niche/{wildcards.slide}/cells.parquet",
        "split": f"{RESULTS}/niche/{wildcards.slide}/{wildcards.encoder}/split.parquet",
        "teacher": f"{kdir}/teacher/logits.parquet",
        "student": f"{kdir}/student/logits.parquet",
        "hist_nolan": f"{kdir}/hist_nolan/logits.parquet",
        "hist_leiden": f"{kdir}/hist_leiden/clusters.parquet",
    }


def external_teacher(wildcards):
    """The sheet's teacher_logits path for this slide; `{k}` in it is replaced by K."""
    return SLIDES.loc[wildcards.slide, "teacher_logits"].replace("{k}", str(wildcards.k))


def niche_expand(*patterns):
    """Patterns with {slide}, {encoder} and {k}, for every slide, encoder and K (duplicates dropped)."""
    files = expand(list(patterns), slide=SLIDES["slide"], encoder=ENCODERS, k=NICHE["k"])
    return list(dict.fromkeys(files))


def niche_metrics():
    return niche_expand(f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}/metrics.tsv")


def niche_targets():
    kdir = f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}"
    return niche_expand(f"{RESULTS}/niche/features/{{encoder}}/{{slide}}.h5", f"{kdir}/metrics.tsv", f"{kdir}/maps.png")


def niche_benchmarks():
    """The benchmark file of every niche job (the runtime table reads them all). With an
    external teacher no scVI runs, so it is not asked for."""
    models = ["niche_teacher_external"] if NICHE["teacher"] == "external" else ["niche_scvi", "niche_teacher"]
    steps = ["niche_ingest", "niche_radius", "niche_split", "niche_features", *models, "niche_student",
             "niche_hist_nolan", "niche_hist_leiden", "niche_evaluate", "niche_maps"]
    return niche_expand(*(str(getattr(rules, step).benchmark) for step in steps))


def all_targets():
    if not NICHE["enabled"]:
        return []
    return niche_targets() + [f"{RESULTS}/benchmark/summary.tsv", f"{RESULTS}/benchmark/runtime.tsv"]
