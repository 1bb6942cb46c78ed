# Sheets, validation beyond the schemas, and input functions shared by the rules, and the niche
# study's; each other study's are in common_<study>.smk, included after this file.
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
from tissuekd.survival import methods as survival_methods

RESULTS = config["results"]
if os.path.exists(RESULTS) and not os.path.isdir(RESULTS):
    raise WorkflowError(f"config results: {RESULTS} is a file; it must name a folder (made where absent)")
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
DOWNLOADS = " (TSV: the button downloads it)"  # a report() label's end: the report shows no TSV, only offers it
DEMO_DIR = config["demo"]["outdir"]
PUBLIC_XENIUM = f"{config['public']['outdir']}/xenium"  # public.smk fetches there, when asked
PUBLIC_TCGA = f"{config['public']['outdir']}/tcga"
TCGA_CDR = {  # the GDC's copy of TCGA-CDR-SupplementalTableS1.xlsx (2,945,129 bytes)
    "url": "https://api.gdc.cancer.gov/data/1b5f413e-a8d1-4d10-92eb-7c4ae739ed81",
    "md5": "a4591b2dcee39591f59e5e25a6ce75fa",
}
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


DEMO_PATHS_AHEAD = set()  # sheet paths under demo.outdir not written yet (check_demo_paths)


def made_by_demo(path):
    """Demo inputs do not exist until the demo rules write them; one not there yet is checked to
    be a demo rule's once every rule is known (check_demo_paths)."""
    if not Path(path).resolve().is_relative_to(Path(DEMO_DIR).resolve()):
        return False
    if not os.path.exists(path):
        DEMO_PATHS_AHEAD.add(str(path))
    return True


def check_demo_paths():
    """Every path a sheet names under demo.outdir that is not there is a demo rule's output or a
    folder of them (a bundle, a Space Ranger outs/). Where the demo already ran, a typo there would
    go unreported: Snakemake looks for the inputs of jobs it runs only, and the jobs are done."""
    from snakemake.io import regex_from_filepattern

    outputs = [str(f) for rule in workflow.rules if rule.name.startswith("demo_") for f in rule.output]
    folders = {str(parent) for f in outputs for parent in Path(f).parents}
    patterns = [re.compile(regex_from_filepattern(os.path.abspath(p))) for p in {*outputs, *folders}]
    for path in sorted(DEMO_PATHS_AHEAD):
        if not any(p.match(os.path.abspath(path)) for p in patterns):
            raise WorkflowError(
                f"{path}: a sheet names it under demo.outdir ({DEMO_DIR}), but it is not there and no demo rule "
                "writes it (a typo?)"
            )


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


def slide_cells(path, slide=None):
    """Cells in `path`, a niche slide's ingested table, else (a plan made before ingest ran, as a
    dry run is) in the bundle of `slide`, so the plan shows the asks the jobs will make."""
    if os.path.exists(path) or slide is None:
        return n_cells(path)
    return n_cells(bundle_cells(SLIDES.loc[slide, "bundle"]))


def slide_counts(path, slide=None):
    """Stored counts in `path`, a slide's ingested counts, else (before ingest) in its bundle's matrix."""
    if os.path.exists(path) or slide is None:
        return n_counts(path)
    return n_counts(matrix_files(SLIDES.loc[slide, "bundle"])[0])  # 0 while it does not exist (a demo's)


def mem_per_cell(base_mb, kb_per_cell, bytes_per_count=0, counts="matrix"):
    """mem_mb = (base + kB per cell x cells + bytes per stored count x counts of input `counts`)
    x attempt: grows with the slide, with its panel (a 5,000-gene panel stores ~10x the counts of
    a 480-gene one per cell) and on retry (an exact multiple of the first request)."""

    def mem_mb(wildcards, input, attempt):
        slide = getattr(wildcards, "slide", None)
        stored = slide_counts(input[counts], slide) if bytes_per_count else 0
        cells = slide_cells(input.cells, slide)
        return round(base_mb + kb_per_cell * cells / 1000 + bytes_per_count * stored / 1e6) * attempt

    return mem_mb


def ingest_mem_mb(wildcards, input, attempt):
    """niche_ingest: mem_per_cell with 30 B per stored count read from the HDF5 matrix (measured
    24: the counts are held twice while read), 60 B from a MEX folder (measured 55: scipy parses
    its coordinates as 64-bit integers before the sparse matrix is built)."""
    per_count = 60 if str(input.matrix).endswith(".mtx.gz") else 30
    return mem_per_cell(2000, 8, bytes_per_count=per_count)(wildcards, input, attempt)


def minutes(base_min):
    """runtime (minutes) = base x attempt: a job SLURM stopped at its time limit is retried with
    more time (the profile's retries), as a job stopped for memory is retried with more memory."""
    return lambda wildcards, attempt: base_min * attempt


def minutes_per_cell(base_min, per_million):
    """runtime (minutes) = base + per million cells, x attempt."""

    def runtime(wildcards, input, attempt):
        cells = slide_cells(input.cells, getattr(wildcards, "slide", None))
        return round(base_min + per_million * cells / 1e6) * attempt

    return runtime


def demo_slide_mem_mb(wildcards, attempt):
    """A demo Xenium slide's generator paints the whole H&E in float32: measured 0.87 GB for
    `demo.niche_cells` 10,500 (12,842 cells made), 2.45 GB for 40,000 (47,279), so 1 GB + 70 kB
    per cell asked (the layout makes ~1.2x the cells asked)."""
    return round(1000 + 70 * config["demo"]["niche_cells"] / 1000) * attempt


def minutes_per_patient(base_min, per_thousand):
    """runtime (minutes) = base + per thousand patients of the cohort (patients.tsv rows), x attempt."""

    def runtime(wildcards, input, attempt):
        rows = sum(1 for _ in open(input.patients)) - 1 if os.path.exists(input.patients) else 0
        return round(base_min + per_thousand * rows / 1000) * attempt

    return runtime


def slide_value(column):
    """Input/param function: one column of the slide's sheet row."""
    return lambda wildcards: SLIDES.loc[wildcards.slide, column]


def bundle_cells(bundle):
    """A Xenium bundle's cell table: parquet, else csv.gz (XOA 1.x)."""
    cells = Path(bundle) / "cells.parquet"
    if not cells.exists() and (Path(bundle) / "cells.csv.gz").exists():
        cells = Path(bundle) / "cells.csv.gz"
    return cells


def xenium_inputs(wildcards):
    """The bundle files ingest reads."""
    row = SLIDES.loc[wildcards.slide]
    bundle = Path(row["bundle"])
    cells = bundle_cells(bundle)
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


# ---- public data sets, fetched by rule only when asked (public.smk) ----
@functools.cache
def public_xenium_list():
    """The list of public Xenium data sets (config public.xenium; read only when a fetch is planned)."""
    path = config["public"]["xenium"] or str(Path(workflow.basedir).parent / "resources" / "xenium_public.tsv")
    table = load_sheet(path, str(Path(workflow.basedir) / "schemas" / "xenium_public.schema.yaml"))
    require_unique(table, "slide", path)
    return table.set_index("slide", drop=False)


def public_xenium_url(column):
    """Param: one URL of a listed data set."""

    def url(wildcards):
        table = public_xenium_list()
        if wildcards.public not in table.index:
            raise WorkflowError(
                f"{wildcards.public} is not in the public Xenium list (names: {', '.join(table.index)})"
            )
        return table.loc[wildcards.public, column]

    return url


def public_xenium_files(wildcards):
    """Every listed data set's bundle and H&E, for the sheet written of them."""
    slides = public_xenium_list().index
    he = rules.fetch_xenium_he.output
    return {
        "outs": expand(rules.fetch_xenium_bundle.output.outs, public=slides),
        "he_image": expand(he.he_image, public=slides),
        "he_alignment": expand(he.he_alignment, public=slides),
    }
