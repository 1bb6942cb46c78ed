# Sheets, validation beyond the schemas, and input functions shared by the rules.
import os
import re
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError

from tissuekd.encoders.registry import EncoderSpec
from tissuekd.errors import InputError
from tissuekd.niche import methods as niche_methods
from tissuekd.survival import methods as survival_methods

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
DEMO_DIR = config["demo"]["outdir"]
CLUSTERS = "analysis/clustering/gene_expression_graphclust/clusters.csv"
SLIDE_PATH_COLUMNS = ["bundle", "he_image", "he_alignment", "cell_types", "pathology", "niche_truth"]
# --sdm conda: envs/*.post-deploy.sh install this checkout into each env (pip install --no-deps -e);
# this tells them where it is, whatever Snakemake's working directory
os.environ.setdefault("TISSUEKD_ROOT", str(Path(workflow.basedir).parent))


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


def load_encoders(names, key):
    specs = {}
    for name in names:
        if name not in config["encoders"]:
            raise WorkflowError(
                f"config {key}: unknown encoder {name!r}; define it under `encoders:` "
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
NICHE_ENCODERS = NICHE["encoders"] if NICHE["enabled"] else []
SURVIVAL = config["survival"]
SURVIVAL_ENCODERS = SURVIVAL["encoders"] if SURVIVAL["enabled"] else []
ENCODERS = {**load_encoders(NICHE_ENCODERS, "niche.encoders"), **load_encoders(SURVIVAL_ENCODERS, "survival.encoders")}


# ---- the methods: each study's one table (src/tissuekd/{niche,survival}/methods.py) and the config's variants ----
def load_methods(study, module):
    """The study's method table with the variants of config `{study}.methods`; each variant's
    settings are checked against the config schema."""
    try:
        methods = module.from_config(config[study])
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    for name, method in methods.items():
        if method.config:
            try:
                validate({**config, study: method.settings(config[study])}, "../schemas/config.schema.yaml")
            except WorkflowError as err:
                raise WorkflowError(f"config {study}.methods.{name}.config: {err}") from None
    return methods


NICHE_METHODS = load_methods("niche", niche_methods)
SURVIVAL_METHODS = load_methods("survival", survival_methods)


def made_by(methods, rule):
    """The methods `rule` makes (the values of its {method} wildcard), in table order."""
    return [name for name, method in methods.items() if method.rule == rule]


def method_wildcard(methods, rule):
    """wildcard_constraints of `rule`'s {method}: the names of the methods it makes."""
    return "|".join(map(re.escape, made_by(methods, rule))) or "NO_METHODS"


def method_file(pattern, name):
    """A {method} pattern of a method rule (an output or benchmark) for the method `name`."""
    return str(pattern).replace("{method}", name)


def method_setting(methods, section, key):
    """Param: config `section[key]` as the job's method sees it (its variant's overrides applied)."""
    return lambda wildcards: methods[wildcards.method].settings(section)[key]


wildcard_constraints:
    slide="|".join(map(re.escape, SLIDES["slide"])) or "NO_SLIDES",
    encoder="|".join(map(re.escape, ENCODERS)) or "NO_ENCODERS",
    k=r"\d+",


def encoder_precision(wildcards):
    """Param: the encoder's own `precision`, else the global one (resolved per device in the job)."""
    return config["encoders"][wildcards.encoder].get("precision", config["precision"])


# ---- resources that follow the input: a slide's cell count (cells.parquet metadata, no data read) ----
def n_cells(path):
    """Rows of a cells table from its parquet metadata (XOA 1.x's cells.csv.gz: estimated at
    40 bytes a cell); 0 while it does not exist yet (Snakemake evaluates the resources of a
    job again once its inputs are there)."""
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        return 0
    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # not parquet (csv.gz), or not readable yet: estimate from the size
        return os.path.getsize(path) // 40


def mem_per_cell(base_mb, kb_per_cell):
    """mem_mb = (base + kB per cell x cells) x attempt: grows with the slide and on retry (a retry
    asks an exact multiple of the first request)."""
    return lambda wildcards, input, attempt: round(base_mb + kb_per_cell * n_cells(input.cells) / 1000) * attempt


def minutes_per_cell(base_min, per_million):
    """runtime (minutes) = base + per million cells, x attempt."""
    return lambda wildcards, input, attempt: round(base_min + per_million * n_cells(input.cells) / 1e6) * attempt


def minutes_per_patient(base_min, per_thousand):
    """runtime (minutes) = base + per thousand patients of the cohort (patients.tsv rows), x attempt."""

    def runtime(wildcards, input, attempt):
        rows = sum(1 for _ in open(input.patients)) - 1 if os.path.exists(input.patients) else 0
        return round(base_min + per_thousand * rows / 1000) * attempt

    return runtime


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
    for optional in ("cell_types", "pathology", "niche_truth"):
        if row[optional]:
            inputs[optional] = row[optional]
    if not row["cell_types"] and ((bundle / CLUSTERS).exists() or made_by_demo(bundle)):
        inputs["clusters"] = bundle / CLUSTERS
    return {k: str(v) for k, v in inputs.items()}


def niche_predictions(wildcards):
    """Everything evaluation and maps compare: the teacher and every method of the table (the
    output its entry names, of the rule its entry names)."""
    inputs = {
        "cells": f"{RESULTS}/niche/{wildcards.slide}/cells.parquet",
        "split": f"{RESULTS}/niche/{wildcards.slide}/{wildcards.encoder}/split.parquet",
        "teacher": f"{RESULTS}/niche/{wildcards.slide}/k{wildcards.k}/teacher/logits.parquet",
    }
    for name, method in NICHE_METHODS.items():
        pattern = getattr(getattr(rules, method.rule).output, method.output)
        inputs[name] = method_file(pattern, name).format(**wildcards)
    return inputs


def external_teacher(wildcards):
    """The sheet's teacher_logits path for this slide; `{k}` in it is replaced by K."""
    return SLIDES.loc[wildcards.slide, "teacher_logits"].replace("{k}", str(wildcards.k))


def niche_expand(*patterns):
    """Patterns with {slide}, {encoder} and {k}, for every slide, encoder and K (duplicates dropped)."""
    files = expand(list(patterns), slide=SLIDES["slide"], encoder=NICHE_ENCODERS, k=NICHE["k"])
    return list(dict.fromkeys(files))


def niche_metrics():
    return niche_expand(f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}/metrics.tsv")


def niche_targets():
    kdir = f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}"
    return niche_expand(f"{RESULTS}/niche/features/{{encoder}}/{{slide}}.h5", f"{kdir}/metrics.tsv", f"{kdir}/maps.png")


def niche_benchmarks():
    """The benchmark file of every niche job (the runtime table reads them all). With an
    external teacher no scVI runs, so it is not asked for."""
    if not NICHE["enabled"]:
        return []
    models = ["niche_teacher_external"] if NICHE["teacher"] == "external" else ["niche_scvi", "niche_teacher"]
    steps = ["niche_ingest", "niche_radius", "niche_split", "niche_features", *models]
    patterns = [str(getattr(rules, step).benchmark) for step in steps]
    patterns += [method_file(getattr(rules, m.rule).benchmark, name) for name, m in NICHE_METHODS.items()]
    patterns += [str(rules.niche_evaluate.benchmark), str(rules.niche_maps.benchmark)]
    return niche_expand(*patterns)


def all_targets():
    targets = []
    if NICHE["enabled"]:
        targets += niche_targets() + [f"{RESULTS}/benchmark/summary.tsv"]
    if SURVIVAL["enabled"]:
        targets += survival_targets() + [f"{RESULTS}/benchmark/survival_folds.tsv"]
    if targets:
        targets.append(f"{RESULTS}/benchmark/runtime.tsv")
    return targets


# ---- survival study (docs/architecture.md) ----
SURVIVAL_COHORTS = pd.DataFrame(columns=["cohort"])
SURVIVAL_SLIDES = pd.DataFrame(columns=["slide", "cohort"])
if SURVIVAL["enabled"]:
    SURVIVAL_COHORTS = load_sheet(SURVIVAL["cohorts"], "../schemas/survival_cohorts.schema.yaml")
    SURVIVAL_SLIDES = load_sheet(SURVIVAL["slides"], "../schemas/survival_slides.schema.yaml")


def check_survival_sheets(cohorts, slides):
    """Names unique, every slide's cohort listed, files present (demo files are made by rules),
    external pairs naming known cohorts."""
    for sheet, column, path in ((cohorts, "cohort", SURVIVAL["cohorts"]), (slides, "slide", SURVIVAL["slides"])):
        dupes = sheet[column][sheet[column].duplicated()].tolist()
        if dupes:
            raise WorkflowError(f"{path}: duplicate {column} name(s) {dupes[:10]}")
    unknown = sorted(set(slides["cohort"]) - set(cohorts["cohort"]))
    if unknown:
        raise WorkflowError(f"{SURVIVAL['slides']}: cohort(s) {unknown} are not in {SURVIVAL['cohorts']}")
    for sheet, path, columns in (
        (cohorts, SURVIVAL["cohorts"], ["clinical", "rna", "gene_sets"]),
        (slides, SURVIVAL["slides"], ["image", "features"]),
    ):
        for row_no, row in enumerate(sheet.to_dict("records"), start=2):
            for column in columns:
                value = row[column]
                if value and not os.path.exists(value) and not made_by_demo(value):
                    raise WorkflowError(f"{path} line {row_no}: column {column!r} names {value}, which does not exist")
            if "image" in columns and not row["image"] and not row["features"]:
                raise WorkflowError(f"{path} line {row_no} (slide {row['slide']}): needs `image` or `features`")
    for pair in SURVIVAL["external"]:
        for role in ("train", "test"):
            if pair[role] not in set(cohorts["cohort"]):
                raise WorkflowError(
                    f"config survival.external: {role} cohort {pair[role]!r} is not in {SURVIVAL['cohorts']}"
                )
        if not cohort_value(pair["train"], "cross_validate"):
            raise WorkflowError(
                f"config survival.external: {pair['train']} is not cross-validated, so it has no models"
            )


def cohort_value(cohort, column):
    value = SURVIVAL_COHORTS.set_index("cohort").loc[cohort, column]
    return value.lower() not in ("no", "false", "0") if column == "cross_validate" else value


if SURVIVAL["enabled"]:
    check_survival_sheets(SURVIVAL_COHORTS, SURVIVAL_SLIDES)
    SURVIVAL_SLIDES = SURVIVAL_SLIDES.set_index("slide", drop=False)


wildcard_constraints:
    wsi="|".join(map(re.escape, SURVIVAL_SLIDES["slide"])) or "NO_SLIDES",
    cohort="|".join(map(re.escape, SURVIVAL_COHORTS["cohort"])) or "NO_COHORTS",
    test="|".join(map(re.escape, SURVIVAL_COHORTS["cohort"])) or "NO_COHORTS",


def survival_slide_value(column):
    return lambda wildcards: SURVIVAL_SLIDES.loc[wildcards.wsi, column]


def survival_features(cohort, encoder):
    """Feature files of a cohort's slides: the sheet's `features` (TRIDENT/CLAM output) where
    given, else the ones the workflow extracts."""
    rows = SURVIVAL_SLIDES[SURVIVAL_SLIDES["cohort"] == cohort]
    return [row.features or f"{RESULTS}/survival/features/{encoder}/{row.slide}.h5" for row in rows.itertuples()]


def cohort_inputs(wildcards):
    inputs = {
        "clinical": cohort_value(wildcards.cohort, "clinical"),
        "features": survival_features(wildcards.cohort, wildcards.encoder),
    }
    if cohort_value(wildcards.cohort, "rna"):
        inputs["rna"] = cohort_value(wildcards.cohort, "rna")
    return inputs


def cohort_slides(wildcards):
    """Param: slide, patient and features file of each slide of the cohort."""
    rows = SURVIVAL_SLIDES[SURVIVAL_SLIDES["cohort"] == wildcards.cohort]
    return {
        "slide": list(rows["slide"]),
        "patient": list(rows["patient"]),
        "features": survival_features(wildcards.cohort, wildcards.encoder),
    }


def gene_sets(wildcards):
    return cohort_value(wildcards.cohort, "gene_sets") or []


SDIR = f"{RESULTS}/survival/{{cohort}}/{{encoder}}"


def survival_predictions(wildcards):
    """Every method's out-of-fold predictions, in table order."""
    return {m: f"{SDIR}/{m}/predictions.tsv".format(**wildcards) for m in SURVIVAL_METHODS}


def survival_teacher(wildcards):
    """The fold models a distilled method learns from (its entry's teacher)."""
    return f"{SDIR}/{SURVIVAL_METHODS[wildcards.method].teacher}/models.pt".format(**wildcards)


def survival_models(wildcards):
    """The training cohort's models the external evaluation applies: those reading no RNA, then,
    if the test cohort has RNA, those reading it."""
    has_rna = bool(cohort_value(wildcards.test, "rna"))
    methods = [m for m, method in SURVIVAL_METHODS.items() if not method.rna]
    methods += [m for m, method in SURVIVAL_METHODS.items() if method.rna and has_rna]
    return {f"{m}_models": f"{SDIR}/{m}/models.pt".format(**wildcards) for m in methods}


def cv_cohorts():
    return [c for c in SURVIVAL_COHORTS["cohort"] if cohort_value(c, "cross_validate")]


def survival_metrics():
    files = expand(f"{SDIR}/metrics.tsv", cohort=cv_cohorts(), encoder=SURVIVAL_ENCODERS)
    for pair in SURVIVAL["external"]:
        files += expand(
            f"{RESULTS}/survival/{{cohort}}/{{encoder}}/external/{{test}}/metrics.tsv",
            cohort=pair["train"],
            test=pair["test"],
            encoder=SURVIVAL_ENCODERS,
        )
    return files


def survival_targets():
    images = SURVIVAL_SLIDES[SURVIVAL_SLIDES["features"] == ""]["slide"]
    thumbs = expand(f"{RESULTS}/survival/thumbnails/{{wsi}}.png", wsi=images)
    kms = [m.replace("metrics.tsv", "km.png") for m in survival_metrics()]
    return thumbs + survival_metrics() + kms


def survival_benchmarks():
    """Benchmark files of every survival job, for the runtime table."""
    if not SURVIVAL["enabled"]:
        return []
    images = SURVIVAL_SLIDES[SURVIVAL_SLIDES["features"] == ""]["slide"]
    files = expand(str(rules.survival_patches.benchmark), wsi=images)
    files += expand(str(rules.survival_features.benchmark), wsi=images, encoder=SURVIVAL_ENCODERS)
    everywhere = dict(cohort=SURVIVAL_COHORTS["cohort"], encoder=SURVIVAL_ENCODERS)
    files += expand(str(rules.survival_cohort.benchmark), **everywhere)
    cv = dict(cohort=cv_cohorts(), encoder=SURVIVAL_ENCODERS)
    files += expand(str(rules.survival_fit.benchmark), method=made_by(SURVIVAL_METHODS, "survival_fit"), **cv)
    files += expand(str(rules.survival_student.benchmark), method=made_by(SURVIVAL_METHODS, "survival_student"), **cv)
    files += expand(str(rules.survival_evaluate.benchmark), **cv)
    for pair in SURVIVAL["external"]:
        files += expand(
            str(rules.survival_external.benchmark), cohort=pair["train"], test=pair["test"], encoder=SURVIVAL_ENCODERS
        )
    return files
