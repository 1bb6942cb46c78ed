# Input functions, sheet checks and resources of the survival study (rules/survival.smk); the
# shared ones, the niche study's and the sheets both studies read are in common.smk.
from tissuekd.survival import gdc
from tissuekd.survival.barcodes import normal_file

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
    return value.lower() not in ("no", "false") if column == "cross_validate" else value


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
