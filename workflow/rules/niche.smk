# Niche study (docs/architecture.md), per slide: ingest -> radius -> split, and per-cell H&E features.
# Torch rules ask one thread: on a 2-core machine two jobs then run side by side, which measured
# 1.44x faster than one 2-thread job at a time (2-thread torch kept 1.1-1.6 cores busy). On SLURM,
# profiles/slurm sets the GPU rules' threads to the CPUs it asks per GPU.


rule niche_ingest:
    input:
        unpack(xenium_inputs),
    output:
        cells=f"{RESULTS}/niche/{{slide}}/cells.parquet",
        expression=f"{RESULTS}/niche/{{slide}}/expression.h5ad",
        slide=f"{RESULTS}/niche/{{slide}}/slide.json",
    log:
        f"{LOGS}/niche/ingest/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/ingest/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=ingest_mem_mb,  # 2 GB + 8 kB a cell + 30 B a stored count (60 from a MEX folder)
        runtime=minutes_per_cell(10, 20),
    params:
        bundle=slide_value("bundle"),
        wsi_backend=NICHE["wsi_backend"],
        he_mpp=slide_value("he_mpp"),
    script:
        "../../scripts/niche_ingest.py"


# The slide's annotations apart from cells.parquet: editing them reruns evaluation and maps only.
rule niche_labels:
    input:
        unpack(label_inputs),
    output:
        f"{RESULTS}/niche/{{slide}}/labels.parquet",
    log:
        f"{LOGS}/niche/labels/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/labels/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(1000, 1),
        runtime=minutes_per_cell(5, 5),
    params:
        bundle=slide_value("bundle"),
    script:
        "../../scripts/niche_labels.py"


rule niche_radius:
    input:
        cells=rules.niche_ingest.output.cells,
    output:
        f"{RESULTS}/niche/{{slide}}/radius.json",
    log:
        f"{LOGS}/niche/radius/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/radius/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(1000, 1),
        runtime=minutes_per_cell(5, 10),
    params:
        target=NICHE["target_neighbors"],
        n_strips=NICHE["n_strips"],
        test_strip=NICHE["test_strip"],
    script:
        "../../scripts/niche_radius.py"


rule niche_split:
    input:
        cells=rules.niche_ingest.output.cells,
        slide=rules.niche_ingest.output.slide,
        radius=rules.niche_radius.output[0],
    output:
        f"{RESULTS}/niche/{{slide}}/{{encoder}}/split.parquet",
    log:
        f"{LOGS}/niche/split/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/split/{{encoder}}/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(1000, 1),
        runtime=minutes_per_cell(5, 5),
    params:
        crop_px=encoder_input_px,
        encoder_mpp=lambda wildcards: ENCODERS[wildcards.encoder].mpp,
    script:
        "../../scripts/niche_split.py"


rule niche_features:
    input:
        cells=rules.niche_ingest.output.cells,
        slide=rules.niche_ingest.output.slide,
        he_image=slide_value("he_image"),
    output:
        ensure(f"{RESULTS}/niche/features/{{encoder}}/{{slide}}.h5", non_empty=True),
    log:
        f"{LOGS}/niche/features/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/features/{{encoder}}/{{slide}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=encoder_mem_mb,
        runtime=minutes_per_cell(30, 120),
        gpu=1,
    params:
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        crop_px=encoder_input_px,
        batch_size=NICHE["batch_size"],
        device=config["device"],
        precision=encoder_precision,
        wsi_backend=NICHE["wsi_backend"],
    script:
        "../../scripts/niche_features.py"


# ---- models (docs/architecture.md, steps 5-10): the teacher per slide and K, the rest per slide, encoder and K ----
# The student and the baselines are the methods of src/tissuekd/niche/methods.py: each rule below makes
# the methods whose entry names it ({method}: the entry's name; its settings with the entry's overrides).
TDIR = f"{RESULTS}/niche/{{slide}}/k{{k}}/teacher"
KDIR = f"{RESULTS}/niche/{{slide}}/{{encoder}}/k{{k}}"


rule niche_scvi:
    input:
        expression=rules.niche_ingest.output.expression,
        cells=rules.niche_ingest.output.cells,
    output:
        model=directory(f"{RESULTS}/niche/{{slide}}/scvi/model"),
        latent=f"{RESULTS}/niche/{{slide}}/scvi/latent.parquet",
    log:
        f"{LOGS}/niche/scvi/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/scvi/{{slide}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        # the counts held once (measured: 9 B per stored count)
        mem_mb=mem_per_cell(2000, 8, bytes_per_count=12, counts="expression"),
        runtime=minutes_per_cell(20, 60),
        gpu=1,
    params:
        n_latent=NICHE["scvi"]["n_latent"],
        max_epochs=NICHE["scvi"]["max_epochs"],
        seed=NICHE["seed"],
        device=config["device"],
    script:
        "../../scripts/niche_scvi.py"


if NICHE["teacher"] == "external":

    rule niche_teacher_external:
        input:
            cells=rules.niche_ingest.output.cells,
            logits=external_teacher,
        output:
            logits=f"{TDIR}/logits.parquet",
        log:
            f"{LOGS}/niche/teacher/k{{k}}/{{slide}}.log",
        benchmark:
            f"{BENCH}/niche/teacher/k{{k}}/{{slide}}.tsv"
        conda:
            "../../envs/scverse.yaml"
        resources:
            mem_mb=mem_per_cell(1000, 1),
            runtime=minutes_per_cell(5, 5),
        script:
            "../../scripts/niche_teacher_external.py"

else:

    rule niche_teacher:
        input:
            latent=rules.niche_scvi.output.latent,
            cells=rules.niche_ingest.output.cells,
            radius=rules.niche_radius.output[0],
        output:
            model=f"{TDIR}/model.pt",
            logits=f"{TDIR}/logits.parquet",
        log:
            f"{LOGS}/niche/teacher/k{{k}}/{{slide}}.log",
        benchmark:
            f"{BENCH}/niche/teacher/k{{k}}/{{slide}}.tsv"
        conda:
            "../../envs/torch-gpu.yaml"
        threads: 1
        resources:
            mem_mb=mem_per_cell(2000, 2),
            runtime=minutes_per_cell(20, 60),
            gpu=1,
        params:
            nolan=NICHE["nolan"],
            max_neighbors=NICHE["max_neighbors"],
            seed=NICHE["seed"],
            device=config["device"],
            precision=config["precision"],
        script:
            "../../scripts/niche_teacher.py"


rule niche_student:
    input:
        features=rules.niche_features.output[0],
        cells=rules.niche_ingest.output.cells,
        split=rules.niche_split.output[0],
        radius=rules.niche_radius.output[0],
        teacher=f"{TDIR}/logits.parquet",
    output:
        model=f"{KDIR}/{{method}}/model.pt",
        logits=f"{KDIR}/{{method}}/logits.parquet",
    log:
        f"{LOGS}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.tsv"
    wildcard_constraints:
        method=method_wildcard(NICHE_METHODS, "niche_student"),
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=mem_per_cell(3000, 2),  # bench.scale: 1.8 GB at 100k-200k cells, +0.5 kB/cell
        runtime=minutes_per_cell(20, 60),
        gpu=1,
    params:
        student=method_setting(NICHE_METHODS, NICHE, "student"),
        max_neighbors=method_setting(NICHE_METHODS, NICHE, "max_neighbors"),
        seed=method_setting(NICHE_METHODS, NICHE, "seed"),
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/niche_student.py"


rule niche_hist_nolan:
    input:
        features=rules.niche_features.output[0],
        cells=rules.niche_ingest.output.cells,
        split=rules.niche_split.output[0],
        radius=rules.niche_radius.output[0],
    output:
        logits=f"{KDIR}/{{method}}/logits.parquet",
    log:
        f"{LOGS}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.tsv"
    wildcard_constraints:
        method=method_wildcard(NICHE_METHODS, "niche_hist_nolan"),
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=mem_per_cell(3000, 2),  # bench.scale: 1.8 GB at 100k-200k cells, +0.5 kB/cell
        runtime=minutes_per_cell(20, 60),
        gpu=1,
    params:
        nolan=method_setting(NICHE_METHODS, NICHE, "nolan"),
        max_neighbors=method_setting(NICHE_METHODS, NICHE, "max_neighbors"),
        seed=method_setting(NICHE_METHODS, NICHE, "seed"),
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/niche_hist_nolan.py"


rule niche_hist_leiden:
    input:
        features=rules.niche_features.output[0],
        cells=rules.niche_ingest.output.cells,
    output:
        clusters=f"{KDIR}/{{method}}/clusters.parquet",
    log:
        f"{LOGS}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/{{method}}/{{encoder}}/k{{k}}/{{slide}}.tsv"
    wildcard_constraints:
        method=method_wildcard(NICHE_METHODS, "niche_hist_leiden"),
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(3000, 3),  # bench.scale: 1.75 GB at 100k cells (graph of <= 50k)
        runtime=minutes_per_cell(20, 120),
    params:
        seed=method_setting(NICHE_METHODS, NICHE, "seed"),
    script:
        "../../scripts/niche_hist_leiden.py"


rule niche_evaluate:
    input:
        unpack(niche_predictions),
    output:
        ensure(f"{KDIR}/metrics.tsv", non_empty=True),
    log:
        f"{LOGS}/niche/evaluate/{{encoder}}/k{{k}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/evaluate/{{encoder}}/k{{k}}/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(1000, 1),
        runtime=minutes_per_cell(10, 10),
    params:
        tissue=slide_value("tissue"),
    script:
        "../../scripts/niche_evaluate.py"


rule niche_maps:
    input:
        unpack(niche_predictions),
    output:
        report(
            f"{KDIR}/maps.png",
            caption="../report/maps.rst",
            category="Niche maps",
            subcategory=slide_value("tissue"),
            labels={"slide": "{slide}", "K": "{k}", "encoder": "{encoder}"},
        ),
    log:
        f"{LOGS}/niche/maps/{{encoder}}/k{{k}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/maps/{{encoder}}/k{{k}}/{{slide}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=mem_per_cell(1000, 1),
        runtime=minutes_per_cell(10, 10),
    script:
        "../../scripts/niche_maps.py"
