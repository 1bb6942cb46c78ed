# Survival study (docs/architecture.md): per slide a tissue mask, patch grid and patch features; per cohort
# and encoder the teacher (pathology + RNA), the AMKD student (pathology only), the two
# baselines, their cross-validated C-index and Kaplan-Meier curves; external validation.


rule survival_patches:
    # run: in Snakemake's process, as survival_features below (a slide's mask and grid take
    # less time than starting a Python for them)
    input:
        image=survival_slide_value("image"),
    output:
        patches=f"{RESULTS}/survival/patches/{{wsi}}.h5",
        thumbnail=report(
            f"{RESULTS}/survival/thumbnails/{{wsi}}.jpg",
            caption="../report/thumbnail.rst",
            category="Survival slides",
            subcategory=lambda wildcards: SURVIVAL_SLIDES.loc[wildcards.wsi, "cohort"],
            labels=lambda wildcards: {"slide": wildcards.wsi},
        ),
    log:
        f"{LOGS}/survival/patches/{{wsi}}.log",
    benchmark:
        f"{BENCH}/survival/patches/{{wsi}}.tsv"
    priority: CHAIN_PRIORITY
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=minutes(20),
    params:
        mpp=survival_slide_value("mpp"),
        magnification=SURVIVAL["magnification"],
        patch_px=SURVIVAL["patch_px"],
        min_tissue=SURVIVAL["min_tissue"],
        wsi_backend=SURVIVAL["wsi_backend"],
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.survival.patches import make_patches

        run_in_process(
            log[0],
            lambda: make_patches(
                input.image,
                output.patches,
                output.thumbnail,
                magnification=params.magnification,
                patch_px=params.patch_px,
                min_tissue=params.min_tissue,
                mpp=float(params.mpp) if params.mpp else None,
                backend=params.wsi_backend,
            ),
        )


rule survival_features:
    # run:, not script: a slide has a few dozen to a few thousand patches, and starting Python,
    # torch and timm per slide (~10 s) cost more than encoding them. Locally (profiles/default:
    # force-use-threads) these jobs run inside Snakemake's process, importing torch once; on
    # SLURM each job is its own process as usual. Outputs and reruns stay per slide. (No
    # conda: directive: run: blocks execute in Snakemake's own environment.) One thread, as every
    # rule here: with two, a slide waited for both cores to be free, i.e. for the whole niche
    # study to finish (the demo's survival chain then ran alone at its end).
    input:
        patches=rules.survival_patches.output.patches,
        image=survival_slide_value("image"),
    output:
        ensure(f"{RESULTS}/survival/features/{{encoder}}/{{wsi}}.h5", non_empty=True),
    log:
        f"{LOGS}/survival/features/{{encoder}}/{{wsi}}.log",
    benchmark:
        f"{BENCH}/survival/features/{{encoder}}/{{wsi}}.tsv"
    priority: CHAIN_PRIORITY
    threads: 1
    resources:
        mem_mb=encoder_mem_mb,
        runtime=minutes(120),
        gpu=1,
    params:
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        crop_px=encoder_input_px,
        batch_size=SURVIVAL["batch_size"],
        device=config["device"],
        precision=encoder_precision,
        wsi_backend=SURVIVAL["wsi_backend"],
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.survival.patches import extract_patch_features

        run_in_process(
            log[0],
            lambda: extract_patch_features(
                input.patches,
                input.image,
                params.encoder,
                output[0],
                crop_px=params.crop_px,
                batch_size=params.batch_size,
                device=params.device,
                precision=params.precision,
                threads=threads,
                backend=params.wsi_backend,
                progress=False,
                reuse_encoder=True,
            ),
            exclusive=True,  # torch's thread count and the encoder cache are the process's
        )


# The cohort's RNA, read and checked once per cohort (not per encoder), before its slides' patches
# (priority): a malformed matrix stops the run before hours of encoding.
rule survival_rna:
    input:
        unpack(rna_inputs),
    output:
        f"{RESULTS}/survival/{{cohort}}/rna_read.parquet",
    log:
        f"{LOGS}/survival/rna/{{cohort}}.log",
    benchmark:
        f"{BENCH}/survival/rna/{{cohort}}.tsv"
    priority: CHAIN_PRIORITY + 1
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=rna_mem_mb,
        runtime=minutes(20),
    params:
        patients=cohort_patients,
        star_value=star_value,
    script:
        "../../scripts/survival_rna.py"


rule survival_cohort:
    input:
        unpack(cohort_inputs),
    output:
        patients=f"{SDIR}/patients.tsv",
        rna=f"{SDIR}/rna.parquet",
        dropped=report(
            f"{SDIR}/dropped.tsv",
            caption="../report/dropped.rst",
            category="Survival",
            subcategory=lambda wildcards: wildcards.cohort,
            labels=lambda wildcards: {
                "result": f"patients left out, with the reason{DOWNLOADS}",
                "encoder": wildcards.encoder,
            },
        ),
    log:
        f"{LOGS}/survival/cohort/{{encoder}}/{{cohort}}.log",
    benchmark:
        f"{BENCH}/survival/cohort/{{encoder}}/{{cohort}}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=cohort_mem_mb,
        runtime=minutes(20),
    params:
        slides=cohort_slides,
        endpoint=SURVIVAL["endpoint"],
        folds=SURVIVAL["folds"],
        seed=SURVIVAL["seed"],
        cross_validate=lambda wildcards: cohort_value(wildcards.cohort, "cross_validate"),
    script:
        "../../scripts/survival_cohort.py"


# The methods of src/tissuekd/survival/methods.py: survival_fit makes the fitted ones, survival_student
# the distilled ones ({method}: the entry's name; its settings with the entry's overrides applied).
rule survival_fit:
    input:
        patients=rules.survival_cohort.output.patients,
        rna=rules.survival_cohort.output.rna,
        gene_sets=gene_sets,
    output:
        models=f"{SDIR}/{{method}}/models.pt",
        predictions=f"{SDIR}/{{method}}/predictions.tsv",
    log:
        f"{LOGS}/survival/fit/{{encoder}}/{{cohort}}_{{method}}.log",
    benchmark:
        f"{BENCH}/survival/fit/{{encoder}}/{{cohort}}_{{method}}.tsv"
    wildcard_constraints:
        method=method_wildcard(SURVIVAL_METHODS, "survival_fit"),
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,  # bags stream from disk (kept when <= 1 GiB): bounded
        runtime=minutes_per_patient(30, 60),
        gpu=1,
    params:
        train=method_setting(SURVIVAL_METHODS, SURVIVAL, "train"),
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/survival_fit.py"


rule survival_student:
    input:
        patients=rules.survival_cohort.output.patients,
        rna=rules.survival_cohort.output.rna,
        gene_sets=gene_sets,
        teacher=survival_teacher,
    output:
        models=f"{SDIR}/{{method}}/models.pt",
        predictions=f"{SDIR}/{{method}}/predictions.tsv",
    log:
        f"{LOGS}/survival/{{method}}/{{encoder}}/{{cohort}}.log",
    benchmark:
        f"{BENCH}/survival/{{method}}/{{encoder}}/{{cohort}}.tsv"
    wildcard_constraints:
        method=method_wildcard(SURVIVAL_METHODS, "survival_student"),
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,  # bags stream from disk (kept when <= 1 GiB): bounded
        runtime=minutes_per_patient(30, 60),
        gpu=1,
    params:
        train=method_setting(SURVIVAL_METHODS, SURVIVAL, "train"),
        amkd=method_setting(SURVIVAL_METHODS, SURVIVAL, "amkd"),
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/survival_student.py"


rule survival_evaluate:
    input:
        unpack(survival_predictions),
        km_models=f"{SDIR}/{survival_methods.KM_METHOD}/models.pt",
    output:
        metrics=f"{SDIR}/metrics.tsv",
        km=report(
            f"{SDIR}/km.png",
            caption="../report/km.rst",
            category="Survival",
            subcategory=lambda wildcards: wildcards.cohort,
            labels=lambda wildcards: {"result": "Kaplan-Meier, cross-validation", "encoder": wildcards.encoder},
        ),
    log:
        f"{LOGS}/survival/evaluate/{{encoder}}/{{cohort}}.log",
    benchmark:
        f"{BENCH}/survival/evaluate/{{encoder}}/{{cohort}}.tsv"
    conda:
        # torch: the student's models.pt (torch.save) holds the risk thresholds of the KM groups
        "../../envs/torch-gpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=minutes(10),
    params:
        endpoint=SURVIVAL["endpoint"],
    script:
        "../../scripts/survival_evaluate.py"


rule survival_external:
    input:
        unpack(survival_models),
        patients=f"{RESULTS}/survival/{{test}}/{{encoder}}/patients.tsv",
        rna=f"{RESULTS}/survival/{{test}}/{{encoder}}/rna.parquet",
    output:
        metrics=f"{SDIR}/external/{{test}}/metrics.tsv",
        km=report(
            f"{SDIR}/external/{{test}}/km.png",
            caption="../report/km_external.rst",
            category="Survival",
            subcategory=lambda wildcards: wildcards.test,
            labels=lambda wildcards: {
                "result": f"Kaplan-Meier, trained on {wildcards.cohort}",
                "encoder": wildcards.encoder,
            },
        ),
    log:
        f"{LOGS}/survival/external/{{encoder}}/{{cohort}}_on_{{test}}.log",
    benchmark:
        f"{BENCH}/survival/external/{{encoder}}/{{cohort}}_on_{{test}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=minutes(30),
    params:
        endpoint=SURVIVAL["endpoint"],
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/survival_external.py"
