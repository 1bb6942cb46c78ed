# Sheets, validation beyond the schemas, and input functions shared by the rules.
import difflib
import functools
import hashlib
import io
import os
import re
import threading
from pathlib import Path

import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.io import regex_from_filepattern

from tissuekd.encoders.registry import EncoderSpec, require_weights, timm_names_cache
from tissuekd.errors import InputError
from tissuekd.io.wsi import require_slide_format
from tissuekd.io.xenium import CLUSTERS, MATRIX, MEX, clusters_path, matrix_files
from tissuekd.niche import methods as niche_methods
from tissuekd.survival import gdc
from tissuekd.survival import methods as survival_methods
from tissuekd.survival.barcodes import normal_file

RESULTS = config["results"]
if os.path.exists(RESULTS) and not os.path.isdir(RESULTS):
    raise WorkflowError(f"config results: {RESULTS} is a file; it must name a folder (made where absent)")
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
DEMO_DIR = config["demo"]["outdir"]
SLIDE_PATH_COLUMNS = ["bundle", "he_image", "he_alignment", "cell_types", "pathology", "niche_truth"]
# The survival study is a deep chain (every slide of a cohort, then its teacher, then its student)
# where the niche study is wide (many short per-slide jobs): started first, it runs beside the
# niche jobs instead of alone at the end. (On the demo, what kept it at the end, 85 s with one
# core idle, was survival_features asking two threads; this priority's own share is unmeasured.)
CHAIN_PRIORITY = 1


def in_process_benchmarks():
    """Patterns (regexes, relative to BENCH) of the benchmark files of `run:` rules: their jobs run
    inside Snakemake's own process (profiles/default: force-use-threads), so a benchmark file's
    memory there is that whole process's and the runtime table leaves it out. Read from the rules
    themselves, so a new `run:` rule is covered without a list to keep."""
    return sorted(
        regex_from_filepattern(str(r.benchmark).removeprefix(f"{BENCH}/"))
        for r in workflow.rules
        if r.is_run and r.benchmark
    )


def cancel_reevaluation_timers():
    """Snakemake re-selects waiting jobs on a timer of the rate limiter's timespan (the profiles'
    `max-jobs-per-timespan`: 10 s), started after each round and not a daemon thread, so every
    run's process waited for the last one after its final line (up to 10 s; a test run's 4-5 s
    in 14). Cancelled once the run is over (onsuccess, onerror), when no job waits any more
    (matched by the function's name, which Snakemake 9 spells `_schedule_reevalutation`)."""
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if isinstance(thread, threading.Timer) and "_schedule_reevalu" in getattr(function, "__qualname__", ""):
            thread.cancel()


# --sdm conda: envs/*.post-deploy.sh install this checkout into each env (pip install --no-deps -e);
# this tells them where it is, whatever Snakemake's working directory
os.environ.setdefault("TISSUEKD_ROOT", str(Path(workflow.basedir).parent))


def load_sheet(path, schema):
    """A tab-separated sample sheet, validated against its schema (defaults filled), indexed by
    each row's line in the file (errors name it). Lines starting with # are comments; a # inside
    a value is kept (a path may hold one). Values are stripped of spaces, and empty fields past
    the header's (a trailing tab) dropped. A row that fails the schema is named by its line, with
    the schema's one-line reason."""
    if not os.path.exists(path):
        raise WorkflowError(f"sample sheet {path} does not exist")
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    kept = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        raise WorkflowError(f"sample sheet {path} is empty")
    if len(kept) == 1:  # pandas and the study's steps would fail far from here (benchmark_niche: "No objects")
        raise WorkflowError(f"sample sheet {path} has a header (line {kept[0] + 1}) but no rows")
    width = len(lines[kept[0]].split("\t"))
    rows = [fit_fields(lines[i], width, f"{path} line {i + 1}") for i in kept]
    sheet = pd.read_csv(io.StringIO("\n".join(rows)), sep="\t", dtype=str).fillna("")
    sheet = sheet.apply(lambda column: column.str.strip())  # a trailing space made a path "not exist"
    sheet.index = [i + 1 for i in kept[1:]]  # 1-based lines of the rows (the first kept line is the header)
    sheet.columns = sheet.columns.str.strip()
    # a spreadsheet's empty columns past the last (a header of trailing tabs): pandas names them Unnamed: N
    empty = [c for c in sheet.columns if re.fullmatch(r"Unnamed: \d+", c) and not sheet[c].any()]
    sheet = sheet.drop(columns=empty)
    check_header(sheet, schema, f"{path} line {kept[0] + 1}")
    try:
        validate(sheet, schema)
    except WorkflowError as err:
        row = re.search(r"validating row (\d+)", str(err))
        reason = re.search(r"ValidationError: (.+)", str(err))
        column = re.search(r"On instance\['([^']+)'\]", str(err))
        if not (row and reason):
            raise
        where = f"{path} line {sheet.index[int(row.group(1))]}" + (f", column {column.group(1)!r}" if column else "")
        raise WorkflowError(f"{where}: {in_words(reason.group(1))}") from None
    return sheet


# the sheets' schema patterns, said in words ("'0.25 µm' does not match '^$|^[0-9]*...'" was the message)
PATTERN_WORDS = {
    "^$|^[0-9]*[.]?[0-9]+$": "is neither empty nor a number (a decimal point and no unit, e.g. 0.2125)",
    "^([0-9]*[.]?[0-9]+)?$": "is neither empty nor a number (a decimal point and no unit, e.g. 0.25)",
    "^[0-9]*$": "is neither empty nor a whole number (a channel index, e.g. 0)",
    "^[A-Za-z0-9][A-Za-z0-9_.-]*$": "is not a name of letters, digits, _ . and - that starts with a letter or digit",
}


def in_words(reason):
    """A schema's "'x' does not match '<pattern>'" with the pattern said in words."""
    for pattern, words in PATTERN_WORDS.items():
        reason = reason.replace(f"does not match {pattern!r}", words)
    return reason


def not_there(path):
    """How a sheet's missing path is said: a relative one with the folder it was looked for in
    (the one Snakemake runs in, not the sheet's)."""
    where = "" if os.path.isabs(path) else f" (relative paths are read from {os.getcwd()})"
    return f"which does not exist{where}"


def fit_fields(line, width, where):
    """A row with empty fields past the header's (an editor's trailing tab) loses them: pandas
    would shift every value one column. Filled extra fields are an error."""
    fields = line.split("\t")
    if len(fields) > width:
        if any(f.strip() for f in fields[width:]):
            raise WorkflowError(f"{where}: {len(fields)} tab-separated fields, but the header names {width} columns")
        return "\t".join(fields[:width])
    return line


def check_header(sheet, schema, where):
    """The header names the schema's columns: a near miss of a known name is an error naming it
    (an optional column misspelt would be ignored without a word), as is an unknown one naming
    files; a required one missing is named at the header; other columns are ignored with a warning."""
    spec = yaml.safe_load(Path(workflow.basedir, "schemas", Path(schema).name).read_text())
    known, required = list(spec["properties"]), spec.get("required", [])
    columns = list(sheet.columns)
    if len(columns) == 1 and "," in columns[0]:
        raise WorkflowError(
            f"{where}: the header has no tab; sheets are tab-separated (this one looks comma-separated)"
        )
    unknown = [c for c in columns if c not in known]
    for column in unknown:
        near = difflib.get_close_matches(column, [k for k in known if k not in columns], n=1, cutoff=0.75)
        if near:
            raise WorkflowError(f"{where}: unknown column {column!r}; did you mean {near[0]!r}?")
    missing = [c for c in required if c not in columns]
    if missing:
        raise WorkflowError(f"{where}: the header lacks the required column(s) {missing} (has {columns})")
    for column in unknown:
        files = [v for v in sheet[column] if v and os.path.isfile(v)]
        if files:
            raise WorkflowError(
                f"{where}: column {column!r} names files (e.g. {files[0]}) but is not a column the "
                f"workflow reads (its columns: {known})"
            )
    if unknown:
        logger.warning(f"{where}: column(s) {unknown} are not read (the sheet's columns: {known})")


def require_unique(sheet, column, path):
    """A sheet's names are unique: the first repeated one is named with its lines."""
    repeated = sheet[column][sheet[column].duplicated()]
    if len(repeated):
        name = repeated.iloc[0]
        lines = sheet.index[sheet[column] == name].tolist()
        more = f" ({len(repeated.unique())} names repeated)" if repeated.nunique() > 1 else ""
        raise WorkflowError(f"{path} lines {', '.join(map(str, lines))}: duplicate {column} name {name!r}{more}")


def require_distinct_files(sheet, columns, path, why):
    """No file serves two rows, or two columns of one row (a copied row, a test split that is the
    training split): compared as real paths, so a relative and an absolute name of one file match,
    then by content where two files have one size (a copy or hard link under another name)."""
    seen, by_size = {}, {}
    for row_no, row in zip(sheet.index, sheet.to_dict("records")):
        for column in columns:
            value = row.get(column, "")
            if not value:
                continue
            real = os.path.realpath(value)
            first_row, first_column, first_value = seen.setdefault(real, (row_no, column, value))
            if (first_row, first_column) != (row_no, column):
                names = f", {value}" if first_value == value else f": {first_value} and {value} are both {real}"
                raise WorkflowError(
                    f"{path} line {first_row} ({first_column}) and line {row_no} ({column}) name one file{names}: {why}"
                )
            size = os.path.getsize(real) if os.path.isfile(real) else 0
            if size:  # stat only: read where two share a size (rare)
                by_size.setdefault(size, []).append((row_no, column, value))
    for size, group in by_size.items():  # each file of a shared size read once, not pairwise
        digests = {}
        for row_no, column, value in group if len(group) > 1 else ():
            digest = ends_digest(value, size)
            first_row, first_column, first_value = digests.setdefault(digest, (row_no, column, value))
            if (first_row, first_column) != (row_no, column):
                raise WorkflowError(
                    f"{path} line {first_row} ({first_column}) and line {row_no} ({column}) name copies of one file: "
                    f"{first_value} and {value} have one size and the same first and last MiB: {why}"
                )


def ends_digest(path, size, sample=1 << 20):
    """A digest of the file's first and last MiB (`size`: its size): a copy under another name has
    the same (comparing files whole would read gigabytes at every planning)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(sample))
        f.seek(max(size - sample, 0))
        digest.update(f.read(sample))
    return digest.hexdigest()


def warn_shared(sheet, column, path, rows, why=""):
    """Rows giving one value of `column` are warned of, with their lines."""
    shared = sheet[(sheet[column] != "") & sheet[column].duplicated(keep=False)]
    if len(shared):
        logger.warning(
            f"{path} lines {', '.join(map(str, shared.index))}: {rows} share the {column} {shared[column].iloc[0]}{why}"
        )


def made_by_demo(path):
    """Demo inputs do not exist until the demo rules write them."""
    return Path(path).resolve().is_relative_to(Path(DEMO_DIR).resolve())


def check_slide_rows(sheet, sheet_path):
    require_unique(sheet, "slide", sheet_path)
    warn_shared(sheet, "bundle", sheet_path, "slides")  # a copied row: one section counts twice in tissue means
    for row_no, row in zip(sheet.index, sheet.itertuples(index=False)):
        where = f"{sheet_path} line {row_no} (slide {row.slide})"
        if NICHE["teacher"] == "external" and not row.teacher_logits:
            raise WorkflowError(f"{where}: niche.teacher is 'external' but the row has no teacher_logits")
        try:
            require_slide_format(row.he_image)
        except InputError as err:
            raise WorkflowError(f"{where}: column 'he_image': {err}") from None
        for column in SLIDE_PATH_COLUMNS:
            path = getattr(row, column)
            if path and not os.path.exists(path) and not made_by_demo(path):
                raise WorkflowError(f"{where}: column {column!r} names {path}, {not_there(path)}")
        if not made_by_demo(row.bundle):
            check_bundle(row.bundle, where)


def check_bundle(bundle, where):
    """A Xenium bundle must hold what ingest reads; say which file is missing."""
    bundle = Path(bundle)
    matrix = matrix_files(bundle)  # the HDF5 matrix, else every file of a MEX folder
    matrix = [[MATRIX, f"{MEX[0]}/"]] if len(matrix) == 1 else [[os.path.relpath(f, bundle)] for f in matrix]
    needed = [["experiment.xenium"], ["cells.parquet", "cells.csv.gz"], *matrix]
    for names in needed:
        if not any((bundle / n).exists() for n in names):
            inner = (bundle / "outs" / names[0]).exists()  # the folder above the bundle, as downloads unpack
            hint = f" (did you mean {bundle / 'outs'}?)" if inner else ""
            raise WorkflowError(f"{where}: the Xenium bundle {bundle} has no {' or '.join(names)}{hint}")


TIMM_NAMES = timm_names_cache()  # names timm knew, per version: dry runs skip the import


def load_encoders(names, key):
    specs = {}
    for name in names:
        if name not in config["encoders"]:
            raise WorkflowError(
                f"config {key}: unknown encoder {name!r}; define it under `encoders:` "
                f"(defined: {sorted(config['encoders'])})"
            )
        try:  # a job's own process (a cluster job) skips the timm lookup: its main process did it
            spec = EncoderSpec.from_config(
                name, config["encoders"][name], check_arch=workflow.is_main_process, cache=TIMM_NAMES
            )
        except InputError as err:
            raise WorkflowError(str(err)) from None
        try:  # the job's own check, before any job: missing, a folder, a Git LFS pointer
            if spec.weights != "random":
                require_weights(spec.weights, spec.described)
        except InputError as err:
            raise WorkflowError(f"config encoders.{name}.weights: {err.where} {err.problem}") from None
        specs[name] = spec
    return specs


NICHE = config["niche"]
if NICHE["test_strip"] >= NICHE["n_strips"]:
    raise WorkflowError(
        f"config niche.test_strip: {NICHE['test_strip']} names no strip of {NICHE['n_strips']} "
        f"(niche.n_strips; strips count from 0)"
    )
EXPRESSION = config["expression"]
# read here, checked with the expression study below: its pseudo-spot rows (format xenium) pool
# slides of the niche sheet, which is then read, and those slides ingested, with the niche study off too
EXPR_SAMPLES = pd.DataFrame(columns=["sample", "dataset", "patient", "format"])
if EXPRESSION["enabled"]:
    EXPR_SAMPLES = load_sheet(EXPRESSION["samples"], "../schemas/expression_samples.schema.yaml")
SLIDES = pd.DataFrame(columns=["slide"])
if NICHE["enabled"] or (EXPR_SAMPLES["format"] == "xenium").any():
    SLIDES = load_sheet(NICHE["slides"], "../schemas/niche_slides.schema.yaml")
    check_slide_rows(SLIDES, NICHE["slides"])
    SLIDES = SLIDES.set_index("slide", drop=False)
NICHE_ENCODERS = NICHE["encoders"] if NICHE["enabled"] else []
SURVIVAL = config["survival"]
SURVIVAL_ENCODERS = SURVIVAL["encoders"] if SURVIVAL["enabled"] else []
EXPRESSION_ENCODERS = EXPRESSION["encoders"] if EXPRESSION["enabled"] else []
ENCODERS = {
    **load_encoders(NICHE_ENCODERS, "niche.encoders"),
    **load_encoders(SURVIVAL_ENCODERS, "survival.encoders"),
    **load_encoders(EXPRESSION_ENCODERS, "expression.encoders"),
}


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
            # a variant given with --config arrives as strings ('4.0'), as the rest of --config does:
            # typed in place, so that its jobs' settings hold numbers too
            typed(method.config, CONFIG_SCHEMA["properties"][study])
            problem = config_problem({**config, study: method.settings(config[study])}, CONFIG_SCHEMA)
            if problem:
                raise WorkflowError(f"config {study}.methods.{name}.config: {problem}")
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


def encoder_input_px(wildcards):
    """Param: the encoder's input side in pixels (`input_px`): crops are cut to it."""
    return ENCODERS[wildcards.encoder].input_px


def encoder_mem_mb(wildcards, attempt):
    """A features job's memory: 6 GB (the crop reader, the batches, a small encoder), or 3 GB plus
    twice the weights file where that is more (float32 weights are held once, the model being built
    on the meta device; an fp16 file is read, then upcast)."""
    weights = ENCODERS[wildcards.encoder].weights
    file_mb = os.path.getsize(weights) / 1e6 if os.path.isfile(weights) else 0
    return round(max(6000, 3000 + 2 * file_mb)) * attempt


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


def n_counts(path):
    """Stored counts (nonzeros) of a sparse matrix from its header: a 10x HDF5 matrix's or an
    h5ad's, or a MEX matrix.mtx.gz's size line; 0 while it does not exist yet."""
    import gzip

    import h5py

    if str(path).endswith(".mtx.gz"):
        try:
            with gzip.open(path, "rt") as fh:
                size = next(line for line in fh if not line.startswith("%"))
            return int(size.split()[2])
        except (OSError, EOFError, StopIteration, IndexError, ValueError):
            return 0
    try:
        with h5py.File(path, "r") as h5:
            data = h5.get("matrix/data") or h5.get("X/data")
            return data.shape[0] if data is not None else 0
    except OSError:
        return 0


def mem_per_cell(base_mb, kb_per_cell, bytes_per_count=0, counts="matrix"):
    """mem_mb = (base + kB per cell x cells + bytes per stored count x counts of input `counts`)
    x attempt: grows with the slide, with its panel (a 5,000-gene panel stores ~10x the counts of
    a 480-gene one per cell) and on retry (an exact multiple of the first request)."""

    def mem_mb(wildcards, input, attempt):
        stored = n_counts(input[counts]) if bytes_per_count else 0
        return round(base_mb + kb_per_cell * n_cells(input.cells) / 1000 + bytes_per_count * stored / 1e6) * attempt

    return mem_mb


def ingest_mem_mb(wildcards, input, attempt):
    """niche_ingest: mem_per_cell with 30 B per stored count read from the HDF5 matrix (measured
    24: the counts are held twice while read), 60 B from a MEX folder (measured 55: scipy parses
    its coordinates as 64-bit integers before the sparse matrix is built)."""
    per_count = 60 if str(input.matrix).endswith(".mtx.gz") else 30
    return mem_per_cell(2000, 8, bytes_per_count=per_count)(wildcards, input, attempt)


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
        **dict(zip(("matrix", "features", "barcodes"), matrix_files(bundle))),  # the HDF5 matrix, else MEX
        "he_image": row["he_image"],
        "he_alignment": row["he_alignment"],
    }
    return {k: str(v) for k, v in inputs.items()}


def label_inputs(wildcards):
    """The slide's cells and the annotations niche_labels puts on them: the sheet's tables, and
    without a cell-type table the bundle's clusters (unpacked, or the download's analysis.tar.gz;
    the demo's made by its rule)."""
    row = SLIDES.loc[wildcards.slide]
    inputs = {"cells": f"{RESULTS}/niche/{wildcards.slide}/cells.parquet"}
    inputs |= {column: row[column] for column in ("cell_types", "pathology", "niche_truth") if row[column]}
    if not row["cell_types"]:
        bundle = Path(row["bundle"])
        clusters = bundle / CLUSTERS if made_by_demo(bundle) else clusters_path(bundle)
        if clusters:
            inputs["clusters"] = str(clusters)
    return inputs


def niche_predictions(wildcards):
    """Everything evaluation and maps compare: the cells and their labels, the teacher and every
    method of the table (the output its entry names, of the rule its entry names)."""
    inputs = {
        "cells": f"{RESULTS}/niche/{wildcards.slide}/cells.parquet",
        "labels": f"{RESULTS}/niche/{wildcards.slide}/labels.parquet",
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


def niche_slide_files():
    """Every slide's ingest record (slide.json): the report's slide table reads them."""
    return niche_expand(f"{RESULTS}/niche/{{slide}}/slide.json")


def warn_of_slide_checks():
    """After a run, the slides whose cells missed their H&E's nuclei, said on the console too
    (the ingest job's warning is in its log; the table in the report)."""
    path = Path(f"{RESULTS}/benchmark/niche_slides.tsv")
    if not (NICHE["enabled"] and path.is_file()):
        return
    table = pd.read_csv(path, sep="\t")
    flagged = table[table["he_flagged"].astype(bool)] if "he_flagged" in table else table.iloc[:0]
    for row in flagged.itertuples():
        logger.warning(
            f"slide {row.slide}: its cells hardly sit on its H&E's nuclei (he_z {row.he_z:g}, below 3; right slides "
            "give about 9-18): is its he_image or he_alignment in the niche sheet another slide's? (Xenium Explorer's "
            f"overlay shows it.) Its metrics are computed and in the means. Table: {path}; the report's niche tables."
        )


def niche_targets():
    kdir = f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}"
    return niche_expand(f"{RESULTS}/niche/features/{{encoder}}/{{slide}}.h5", f"{kdir}/metrics.tsv", f"{kdir}/maps.png")


def niche_benchmarks():
    """The benchmark file of every niche job (the runtime table reads them all). With an
    external teacher no scVI runs, so it is not asked for."""
    if not NICHE["enabled"]:
        return []
    models = ["niche_teacher_external"] if NICHE["teacher"] == "external" else ["niche_scvi", "niche_teacher"]
    steps = ["niche_ingest", "niche_labels", "niche_radius", "niche_split", "niche_features", *models]
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
    if SEG["enabled"]:
        targets += [f"{RESULTS}/benchmark/segmentation_by_dataset.tsv"]
        targets += [f"{RESULTS}/segmentation/{dataset}/panel.png" for dataset in SEG_TRAIN]
    if EXPRESSION["enabled"]:
        targets += [f"{RESULTS}/benchmark/expression_by_dataset.tsv"]
        targets += expand(f"{XDIR}/{{task}}/{{encoder}}/maps.png", task=EXPR_DATASETS, encoder=EXPRESSION_ENCODERS)
    if targets:
        targets.append(f"{RESULTS}/benchmark/runtime.tsv")
    return targets


# ---- survival study (docs/architecture.md) ----
SURVIVAL_COHORTS = pd.DataFrame(columns=["cohort"])
SURVIVAL_SLIDES = pd.DataFrame(columns=["slide", "cohort"])
if SURVIVAL["enabled"]:
    SURVIVAL_COHORTS = load_sheet(SURVIVAL["cohorts"], "../schemas/survival_cohorts.schema.yaml")
    SURVIVAL_SLIDES = load_sheet(SURVIVAL["slides"], "../schemas/survival_slides.schema.yaml")


@functools.cache
def gdc_star_files(rna):
    """The STAR files a GDC sample sheet lists (inputs: a changed file reruns the cohort); [] for a matrix."""
    if not gdc.is_sample_sheet(rna):
        return []
    try:
        return list(gdc.star_files(rna)["path"])
    except InputError as err:
        raise WorkflowError(str(err)) from None


def check_survival_sheets(cohorts, slides):
    """Names unique, every slide's cohort listed, files present (demo files are made by rules),
    external pairs naming known cohorts."""
    for sheet, column, path in ((cohorts, "cohort", SURVIVAL["cohorts"]), (slides, "slide", SURVIVAL["slides"])):
        require_unique(sheet, column, path)
    unknown = sorted(set(slides["cohort"]) - set(cohorts["cohort"]))
    if unknown:
        raise WorkflowError(f"{SURVIVAL['slides']}: cohort(s) {unknown} are not in {SURVIVAL['cohorts']}")
    for sheet, path, columns in (
        (cohorts, SURVIVAL["cohorts"], ["clinical", "rna", "gene_sets"]),
        (slides, SURVIVAL["slides"], ["image", "features"]),
    ):
        for row_no, row in zip(sheet.index, sheet.to_dict("records")):
            for column in columns:
                value = row[column]
                if value and not os.path.exists(value) and not made_by_demo(value):
                    raise WorkflowError(f"{path} line {row_no}: column {column!r} names {value}, {not_there(value)}")
    for rna in cohorts["rna"]:
        if rna:
            gdc_star_files(rna)  # a GDC sample sheet's files are all there
    check_slide_files(slides, SURVIVAL["slides"])
    check_patients_in_clinical(cohorts, slides)
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
        patients = [set(slides.loc[slides["cohort"] == pair[role], "patient"]) for role in ("train", "test")]
        shared = sorted(patients[0] & patients[1])
        if shared:  # the models would be scored on patients they trained on
            raise WorkflowError(
                f"config survival.external: {len(shared)} patient(s) of {pair['test']} are also in "
                f"{pair['train']}, which trains the models (e.g. {shared[:3]}): an external cohort must be new patients"
            )


def check_slide_files(slides, path):
    """Each slide has an image (a whole-slide format) or features, of its own, and is not a
    normal-tissue sample under another name (it would join its patient's tumour bag)."""
    for row_no, row in zip(slides.index, slides.to_dict("records")):
        where = f"{path} line {row_no} (slide {row['slide']})"
        if not row["image"] and not row["features"]:
            raise WorkflowError(f"{where}: needs `image` or `features`")
        if row["image"]:
            try:
                require_slide_format(row["image"])
            except InputError as err:
                raise WorkflowError(f"{path} line {row_no}: column 'image': {err}") from None
        normal = normal_file(row["slide"], row["patient"], [row["image"], row["features"]])
        if normal:
            raise WorkflowError(
                f"{where}: {normal} is a normal-tissue or control sample of {row['patient']} (TCGA sample "
                "type 10-29), which would join the tumour slides' bag: give the slide its barcode as its name "
                "(the study then leaves it out) or remove the row"
            )
    require_distinct_files(
        slides,
        ("image", "features"),
        path,
        "one slide would join two bags (a copied row; where their patients differ, a tested patient's slide is trained on too)",
    )


def check_patients_in_clinical(cohorts, slides):
    """A cohort none of whose slides' patients is in its clinical table (e.g. the sheet's
    `patient` column holding slide ids), or whose table lacks the endpoint's columns, stops the
    plan, before any slide is encoded; partial overlaps are the cohort job's drops."""
    from tissuekd.survival.clinical import clinical_barcodes

    for cohort in cohorts.to_dict("records"):
        if not cohort["clinical"] or made_by_demo(cohort["clinical"]):
            continue
        try:
            barcodes = clinical_barcodes(
                cohort["clinical"], cache_dir=".snakemake/tissuekd", endpoint=SURVIVAL["endpoint"]
            )
        except InputError as err:
            raise WorkflowError(f"{SURVIVAL['cohorts']} (cohort {cohort['cohort']}): {err}") from None
        patients = sorted(set(slides.loc[slides["cohort"] == cohort["cohort"], "patient"]))
        if barcodes is not None and patients and not barcodes & set(patients):
            raise WorkflowError(
                f"{SURVIVAL['slides']}: no patient of cohort {cohort['cohort']} (e.g. {patients[:2]}) is in its "
                f"clinical table {cohort['clinical']} (bcr_patient_barcode, e.g. {sorted(barcodes)[:2]}): "
                "does the `patient` column hold patient barcodes?"
            )


def cohort_value(cohort, column):
    value = SURVIVAL_COHORTS.set_index("cohort").loc[cohort, column]
    return value.lower() not in ("no", "false", "0") if column == "cross_validate" else value


def check_folds(cohorts, slides):
    """A cross-validated cohort has at least one patient per fold (survival.folds)."""
    for cohort in cohorts["cohort"]:
        patients = slides.loc[slides["cohort"] == cohort, "patient"].nunique()
        if cohort_value(cohort, "cross_validate") and patients < SURVIVAL["folds"]:
            raise WorkflowError(
                f"config survival.folds: {SURVIVAL['folds']} folds for cohort {cohort}, which lists "
                f"{patients} patient(s) in {SURVIVAL['slides']}"
            )


if SURVIVAL["enabled"]:
    check_survival_sheets(SURVIVAL_COHORTS, SURVIVAL_SLIDES)
    check_folds(SURVIVAL_COHORTS, SURVIVAL_SLIDES)
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
    clinical = cohort_value(wildcards.cohort, "clinical")
    inputs = {
        "clinical": clinical,
        "features": survival_features(wildcards.cohort, wildcards.encoder),
    }
    follow_up = gdc.follow_up_table(clinical)
    if follow_up:  # read with a GDC clinical table
        inputs["follow_up"] = str(follow_up)
    if cohort_value(wildcards.cohort, "rna"):
        inputs["rna"] = f"{RESULTS}/survival/{wildcards.cohort}/rna_read.parquet"
    return inputs


def rna_inputs(wildcards):
    """The cohort's RNA as given: a matrix, or a GDC sample sheet with its STAR files."""
    rna = cohort_value(wildcards.cohort, "rna")
    return {"rna": rna, "star_files": gdc_star_files(rna)}


def cohort_patients(wildcards):
    """Param: the patients of the cohort's slides (whose RNA is read)."""
    return sorted(set(SURVIVAL_SLIDES.loc[SURVIVAL_SLIDES["cohort"] == wildcards.cohort, "patient"]))


def star_value(wildcards):
    """Param: the STAR column read, for a cohort whose RNA is a GDC download ("" otherwise: changing
    it reruns no other cohort)."""
    rna = cohort_value(wildcards.cohort, "rna")
    return SURVIVAL["star_value"] if rna and gdc_star_files(rna) else ""


def rna_mem_mb(wildcards, input, attempt):
    """Resource: the RNA is read whole. A matrix (PanCan's is ~2e8 values): ~4 bytes of memory per
    byte of text (parsed, made numeric, transposed), ~12 per byte compressed (read as pandas infers).
    A GDC download: one float32 row of ~60,000 genes per STAR file (gdc.STAR_FILE_MB)."""
    rna = input.rna
    packed = str(rna).lower().endswith((".gz", ".bz2", ".xz", ".zst", ".zip"))
    text_mb = os.path.getsize(rna) / 1e6 * (3 if packed else 1)
    return int(2000 + 4 * text_mb + gdc.STAR_FILE_MB * len(input.get("star_files", []))) * attempt


def cohort_mem_mb(wildcards, input, attempt):
    """Resource: the cohort's RNA as read (a float32 parquet of its slides' patients), held as
    float64 with a copy or two: 10 bytes per byte of parquet, and pandas beside."""
    rna = input.get("rna")
    return int(2000 + 10 * (os.path.getsize(rna) / 1e6 if rna else 0)) * attempt


def cohort_slides(wildcards):
    """Param: slide, patient and features file of each slide of the cohort."""
    rows = SURVIVAL_SLIDES[SURVIVAL_SLIDES["cohort"] == wildcards.cohort]
    return {
        "slide": list(rows["slide"]),
        "patient": list(rows["patient"]),
        "features": survival_features(wildcards.cohort, wildcards.encoder),
    }


def gene_sets(wildcards):
    """The cohort's GMT, for a method that reads RNA or is taught by one (builds its teacher):
    the others do not rerun when it changes."""
    method = SURVIVAL_METHODS[wildcards.method]
    reader = SURVIVAL_METHODS[method.teacher] if method.distilled else method
    return (cohort_value(wildcards.cohort, "gene_sets") or []) if reader.rna else []


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
    thumbs = expand(f"{RESULTS}/survival/thumbnails/{{wsi}}.jpg", wsi=images)
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
    with_rna = [c for c in SURVIVAL_COHORTS["cohort"] if cohort_value(c, "rna")]
    files += expand(str(rules.survival_rna.benchmark), cohort=with_rna)
    cv = dict(cohort=cv_cohorts(), encoder=SURVIVAL_ENCODERS)
    files += expand(str(rules.survival_fit.benchmark), method=made_by(SURVIVAL_METHODS, "survival_fit"), **cv)
    files += expand(str(rules.survival_student.benchmark), method=made_by(SURVIVAL_METHODS, "survival_student"), **cv)
    files += expand(str(rules.survival_evaluate.benchmark), **cv)
    for pair in SURVIVAL["external"]:
        files += expand(
            str(rules.survival_external.benchmark), cohort=pair["train"], test=pair["test"], encoder=SURVIVAL_ENCODERS
        )
    return files


# ---- segmentation study (docs/architecture.md) ----
SEG = config["segmentation"]
SEG_SETS = pd.DataFrame(columns=["dataset", "role"])
SEG_TEACHERS = {"no-kd": "", "kd": "multiplex", "kd-nuclear-teacher": "nuclear"}  # mode -> teacher view


def external_map_columns():
    """The sheet columns an external teacher needs: its maps, and its nuclear-only maps where
    the kd-nuclear-teacher control runs."""
    if SEG["teacher"] != "external":
        return ()
    return ("teacher_maps", "teacher_maps_nuclear") if "kd-nuclear-teacher" in SEG["modes"] else ("teacher_maps",)


def seg_teacher_views():
    """The teacher views that exist: the U-Net teacher trains both (the nuclear one is a
    reference); an external or SAM teacher only those the modes distil from."""
    if SEG["teacher"] == "unet-multiplex":
        return ["multiplex", "nuclear"]
    return seg_distilled_views()


def seg_distilled_views():
    """The teacher views a mode distils from: the only ones whose maps on the training set are made."""
    return [SEG_TEACHERS[m] for m in SEG["modes"] if SEG_TEACHERS[m]]


def teacher_test_maps(dataset, view):
    """The maps an external or SAM teacher is scored from (its own test split)."""
    if SEG["teacher"] == "sam":
        return f"{RESULTS}/segmentation/{dataset}/teacher/{view}/test_maps.npz"
    return SEG_SETS.loc[dataset, "teacher_maps" if view == "multiplex" else "teacher_maps_nuclear"]


def seg_teacher_test_maps(wildcards):
    return teacher_test_maps(wildcards.dataset, wildcards.view)


def seg_test_split_of_dataset(wildcards):
    return {"test": SEG_SETS.loc[wildcards.dataset, "test"]}


def seg_external_maps(wildcards):
    """Input: the external teacher's maps of the view's channels (the sheet's column)."""
    return {"maps": teacher_test_maps(wildcards.dataset, wildcards.view)}


def check_split_row(row, split, where, training=False):
    """A split's layout, sizes and channels from its headers (every image and label file of a
    BBBC038 or TIFF folder), so a bad test or cross split stops before any model is trained on
    the others; a `training` split's images must also hold the training crops (else every
    teacher and student job would fail on its first batch)."""
    from tissuekd.io.segmentation import ONE_LABEL_CHANNEL, check_split, npz_shape

    membrane = int(row["membrane"]) if row["membrane"] else None
    try:
        side = check_split(row["format"], split, row["target"], int(row["nuclear"] or 0), membrane)
    except InputError as err:
        raise WorkflowError(f"{where}: {err}") from None
    if row["format"] == "tissuenet" and npz_shape(Path(split), "y")[-1] == 1:  # nothing in the file tells which
        logger.warning(f"{where}: {split}: {ONE_LABEL_CHANNEL.format(target=row['target'])}")
    tile = SEG["train"]["tile"]
    if training and tile > side:
        raise WorkflowError(
            f"{where}: {split}: its smallest image side is {side} px, less than the training crops "
            f"(segmentation.train.tile {tile}); set a tile of at most {side // 32 * 32}"
        )


def check_segmentation_sheet(sheet, path):
    """Names unique, a training set with a membrane channel and a train split, files present
    (demo files are made by rules)."""
    require_unique(sheet, "dataset", path)
    require_distinct_files(
        sheet, ("train", "test"), path, "a model would be scored on images it was trained on (or one set twice)"
    )
    for row_no, row in zip(sheet.index, sheet.to_dict("records")):
        where = f"{path} line {row_no} (dataset {row['dataset']})"
        if row["role"] == "train":
            if row["format"] not in ("tissuenet", "tiff"):
                raise WorkflowError(
                    f"{where}: only tissuenet and tiff sets can be trained on (role train); {row['format']} is role cross"
                )
            if not row["train"] or not row["membrane"]:
                raise WorkflowError(
                    f"{where}: role train needs a `train` split and a `membrane` channel for the teacher"
                )
            if row["membrane"] == row["nuclear"]:
                raise WorkflowError(f"{where}: the membrane channel is the nuclear one ({row['nuclear']})")
            for column in external_map_columns():
                if not row.get(column):
                    raise WorkflowError(f"{where}: segmentation.teacher external needs column {column!r}")
        if row["format"] == "bbbc038" and (row["target"] != "nuclear" or row["membrane"] or row["nuclear"] != "0"):
            raise WorkflowError(
                f"{where}: bbbc038 images are one nuclear channel with nuclear labels: set target nuclear, nuclear 0 "
                "and no membrane"
            )
        for column in ("train", "test", *external_map_columns()):
            value = row[column]
            if value and not os.path.exists(value) and not made_by_demo(value):
                raise WorkflowError(f"{where}: column {column!r} names {value}, {not_there(value)}")
            if value and column in ("train", "test") and not made_by_demo(value):
                check_split_row(row, value, where, training=column == "train" and row["role"] == "train")
    if not (sheet["role"] == "train").any():
        raise WorkflowError(f"{path}: no data set with role train")
    sam_weights = SEG["sam"]["checkpoint"]
    if SEG["teacher"] == "sam" and not os.path.isfile(sam_weights):
        raise WorkflowError(
            f"segmentation.sam.checkpoint: {sam_weights or '(empty)'} is not a file; SAM weights are never "
            "downloaded: name a local checkpoint (e.g. sam_vit_h_4b8939.pth)"
        )


if SEG["enabled"]:
    SEG_SETS = load_sheet(SEG["datasets"], "../schemas/segmentation_datasets.schema.yaml")
    check_segmentation_sheet(SEG_SETS, SEG["datasets"])
    SEG_SETS = SEG_SETS.set_index("dataset", drop=False)
SEG_TRAIN = list(SEG_SETS.loc[SEG_SETS["role"] == "train", "dataset"])


wildcard_constraints:
    dataset="|".join(map(re.escape, SEG_TRAIN)) or "NO_DATASETS",
    on="|".join(map(re.escape, SEG_SETS["dataset"])) or "NO_DATASETS",
    backbone="|".join(map(re.escape, SEG["students"])),
    mode="|".join(map(re.escape, SEG["modes"])),
    seed=r"\d+",
    model=r"teacher/(multiplex|nuclear)|students/[a-z0-9-]+/[a-z-]+/seed\d+",


def seg_split_kwargs(dataset, split):
    """read_split's arguments for a split ("train" or "test") of a sheet row; a folder's
    `contents` (its files' fingerprint) makes the jobs that read it rerun when one changes."""
    row = SEG_SETS.loc[dataset]
    return {
        "fmt": row["format"],
        "path": row[split],
        "target": row["target"],
        "nuclear": int(row["nuclear"] or 0),
        "membrane": int(row["membrane"]) if row["membrane"] else None,
        **({"contents": folder_fingerprint(row[split])} if os.path.isdir(row[split]) else {}),
    }


@functools.cache
def folder_fingerprint(folder):
    """A digest of the names, sizes and modification times of every file under `folder`: a folder
    as an input changes only when a file is added or removed, not when one is rewritten."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def seg_split(split):
    """Param: read_split's arguments for the job's training set."""
    return lambda wildcards: seg_split_kwargs(wildcards.dataset, split)


def seg_split_inputs(wildcards):
    """A training job's split, and the checks of the test splits its models will be scored on."""
    return {"train": SEG_SETS.loc[wildcards.dataset, "train"], "checked": seg_test_checks(wildcards.dataset)}


def seg_scored_sets(dataset):
    """The sets a data set's models are scored on: its own and every cross set."""
    return [on for on in SEG_SETS["dataset"] if on == dataset or SEG_SETS.loc[on, "role"] == "cross"]


def seg_test_checks(dataset):
    return [f"{RESULTS}/segmentation/checked/{on}.txt" for on in seg_scored_sets(dataset)]


def seg_test_to_check(wildcards):
    """The check's input: a demo test split only (a rule makes it, so it must come first). A
    user's split is no input and its arguments no params, so the check runs once: neither a
    rewritten split nor a new path in the sheet reruns it, hence no training job (the scoring
    reruns and reads the split again)."""
    path = seg_test_path(wildcards)
    return {"test": ancient(path)} if made_by_demo(path) else {}


def seg_test_path(wildcards):
    return SEG_SETS.loc[wildcards.on, "test"]


def seg_test_split(wildcards):
    """Param: read_split's arguments for the test split of the set evaluated on ({on})."""
    return seg_split_kwargs(wildcards.on, "test")


def seg_test_inputs(wildcards):
    return {"test": SEG_SETS.loc[wildcards.on, "test"]}


def seg_teacher_probs(wildcards):
    """A kd student's teacher maps: every shard of its teacher's (none for no-kd)."""
    view = SEG_TEACHERS[wildcards.mode]
    if not view:
        return []
    return [
        f"{RESULTS}/segmentation/{wildcards.dataset}/teacher/{view}/probs/{s}.npz" for s in range(SEG["teacher_shards"])
    ]


def split_bytes(path):
    """Bytes of a split: its file, or every file of its folder (BBBC038, TIFF); 0 before the demo makes it."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


@functools.cache
def split_held_bytes(path):
    """Bytes of a split's arrays (tissuekd.io.segmentation.split_array_bytes; 0 before the demo
    makes it), once per split however many jobs ask."""
    from tissuekd.io.segmentation import split_array_bytes

    return split_array_bytes(path) if os.path.exists(path) else 0


def split_of_job(wildcards, input, split, path_of):
    """The split a job reads: its input named `split`, or `path_of(wildcards)` for a job that
    has it as no input (segmentation_check_test)."""
    return path_of(wildcards) if path_of else getattr(input, split)


def mem_per_image(base_mb, split="train", path_of=None):
    """mem_mb = (base + 2 x the split's arrays) x attempt: training, inference and scoring read one
    image at a time (bounded caches), so the split counts only through its mapped or decompressed
    pages; measured 1.1-1.6 MB per MB of split (2026-12-04, 5-302 MB TissueNet-layout splits)."""

    def mem(wildcards, input, attempt):
        return round(base_mb + 2 * split_held_bytes(split_of_job(wildcards, input, split, path_of)) / 1e6) * attempt

    return mem


TRAIN_PIXELS_PER_MINUTE = 1e9  # a U-Net's training pixels per minute, set low for a modest GPU (~17 Mpx/s)


def minutes_per_step(base_min):
    """runtime (minutes): base + the pixels the config's training steps see (epochs x steps x
    batch x tile^2) at TRAIN_PIXELS_PER_MINUTE, x attempt (the demo's 100 steps of 8 x 64^2: base)."""
    train = SEG["train"]
    pixels = train["epochs"] * train["steps_per_epoch"] * train["batch_size"] * train["tile"] ** 2
    return lambda wildcards, attempt: round(base_min + pixels / TRAIN_PIXELS_PER_MINUTE) * attempt


def minutes_per_gb(base_min, per_gb, split="train", shards=1, path_of=None):
    """runtime (minutes) = base + per GB of the split a job predicts (its share of `shards`), x
    attempt: inference time follows the pixels (split_held_bytes: the split's arrays)."""

    def runtime(wildcards, input, attempt):
        held = split_held_bytes(split_of_job(wildcards, input, split, path_of))
        return round(base_min + per_gb * held / 1e9 / shards) * attempt

    return runtime


def seg_models(with_membrane=True):
    """The models of a training set: the teachers (the multiplex one only where the test set has
    a membrane channel; external and SAM teachers only on their own test set, from their maps)
    and every student."""
    views = seg_teacher_views()
    if not with_membrane:
        views = [v for v in views if v == "nuclear"] if SEG["teacher"] == "unet-multiplex" else []
    models = [f"teacher/{v}" for v in views]
    return models + expand("students/{b}/{m}/seed{s}", b=SEG["students"], m=SEG["modes"], s=SEG["seeds"])


def segmentation_evaluations():
    """(training set, model, test set): every model on its own set's test split and, the
    nuclear-input ones, on every cross set."""
    runs = []
    for dataset in SEG_TRAIN:
        for on in seg_scored_sets(dataset):
            runs += [(dataset, m, on) for m in seg_models(with_membrane=on == dataset)]
    return runs


def segmentation_scores():
    return [
        str(rules.segmentation_evaluate.output[0]).format(dataset=d, model=m, on=on)
        for d, m, on in segmentation_evaluations()
    ]


def seg_panel_models(dataset):
    """Column title -> checkpoint of the report's panel: the multiplex teacher, then the first
    student backbone at the first seed in each mode."""
    teacher = f"{RESULTS}/segmentation/{dataset}/teacher/multiplex/model.pt"
    if SEG["teacher"] != "unet-multiplex":
        teacher = teacher_test_maps(dataset, "multiplex")
    models = {"teacher (multiplex)": teacher}
    backbone, seed = SEG["students"][0], SEG["seeds"][0]
    for mode in SEG["modes"]:
        models[f"{backbone} {mode}"] = (
            f"{RESULTS}/segmentation/{dataset}/students/{backbone}/{mode}/seed{seed}/model.pt"
        )
    return models


def seg_panel_inputs(wildcards):
    return {
        "test": SEG_SETS.loc[wildcards.dataset, "test"],
        "models": list(seg_panel_models(wildcards.dataset).values()),
    }


def seg_panel_titles(wildcards):
    return list(seg_panel_models(wildcards.dataset))


def segmentation_benchmarks():
    """Benchmark files of every segmentation job, for the runtime table."""
    if not SEG["enabled"]:
        return []
    files, views = [], seg_teacher_views()
    if SEG["teacher"] == "unet-multiplex":
        files += expand(str(rules.segmentation_teacher.benchmark), dataset=SEG_TRAIN, view=views)
    if SEG["teacher"] == "sam":
        files += expand(str(rules.segmentation_sam_test_maps.benchmark), dataset=SEG_TRAIN, view=views)
    external = SEG["teacher"] == "external"
    probs = rules.segmentation_teacher_maps_external if external else rules.segmentation_teacher_probs
    files += expand(
        str(probs.benchmark),
        dataset=SEG_TRAIN,
        view=seg_distilled_views(),
        shard=range(SEG["teacher_shards"]),
    )
    files += expand(
        str(rules.segmentation_student.benchmark),
        dataset=SEG_TRAIN,
        backbone=SEG["students"],
        mode=SEG["modes"],
        seed=SEG["seeds"],
    )
    files += expand(str(rules.segmentation_panel.benchmark), dataset=SEG_TRAIN)
    files += expand(
        str(rules.segmentation_check_test.benchmark), on=sorted({on for d in SEG_TRAIN for on in seg_scored_sets(d)})
    )
    bench = str(rules.segmentation_evaluate.benchmark)
    return files + [bench.format(dataset=d, model=m, on=on) for d, m, on in segmentation_evaluations()]


# ---- expression study (docs/architecture.md); its sheet is read above, with the niche sheet ----


EXPR_FORMAT_COLUMNS = {"hest": ("st", "image", "metadata"), "visium": ("outs", "image"), "xenium": ("niche_slide",)}
EXPR_OPTIONAL_WITH_PATCHES = ("image", "metadata")  # HEST-benchmark ships patches and h5ad only


def spaceranger_files(outs):
    """Space Ranger's files that prepare reads (tissuekd.io.visium.outs_files), as inputs."""
    from tissuekd.io.visium import outs_files

    return {name: str(path) for name, path in outs_files(outs).items()}


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
                        + (" (or tissue_positions_list.csv)" if name == "positions" else "")
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

    cells = n_cells(input.cells)
    chunk_counts = n_counts(input.cell_counts) * min(1.0, POOL_CHUNK_CELLS / cells) if cells else 0
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
