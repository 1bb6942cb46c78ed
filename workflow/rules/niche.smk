# Niche study (DESIGN 2.1), per slide: ingest -> radius -> split, and per-cell H&E features.


rule niche_ingest:
    input:
        unpack(xenium_inputs),
    output:
        cells=f"{RESULTS}/niche/{{slide}}/cells.parquet",
        expression=f"{RESULTS}/niche/{{slide}}/expression.h5ad",
        slide=f"{RESULTS}/niche/{{slide}}/slide.json",
    params:
        bundle=slide_value("bundle"),
        tissue=slide_value("tissue"),
        wsi_backend=NICHE["wsi_backend"],
    log:
        f"{LOGS}/niche/ingest/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/ingest/{{slide}}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    conda:
        "../../envs/scverse.yaml"
    script:
        "../../scripts/niche_ingest.py"


rule niche_radius:
    input:
        cells=rules.niche_ingest.output.cells,
        slide=rules.niche_ingest.output.slide,
    output:
        f"{RESULTS}/niche/{{slide}}/{{encoder}}/radius.json",
    params:
        target=NICHE["target_neighbors"],
        n_strips=NICHE["n_strips"],
        test_strip=NICHE["test_strip"],
        crop_px=NICHE["crop_px"],
        encoder_mpp=lambda wildcards: ENCODERS[wildcards.encoder].mpp,
    log:
        f"{LOGS}/niche/radius/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/radius/{{encoder}}/{{slide}}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=10,
    conda:
        "../../envs/scverse.yaml"
    script:
        "../../scripts/niche_radius.py"


rule niche_split:
    input:
        cells=rules.niche_ingest.output.cells,
        radius=rules.niche_radius.output[0],
    output:
        f"{RESULTS}/niche/{{slide}}/{{encoder}}/split.parquet",
    log:
        f"{LOGS}/niche/split/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/split/{{encoder}}/{{slide}}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=10,
    conda:
        "../../envs/scverse.yaml"
    script:
        "../../scripts/niche_split.py"


rule niche_features:
    input:
        cells=rules.niche_ingest.output.cells,
        slide=rules.niche_ingest.output.slide,
        he_image=slide_value("he_image"),
    output:
        f"{RESULTS}/niche/features/{{encoder}}/{{slide}}.h5",
    params:
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        crop_px=NICHE["crop_px"],
        batch_size=NICHE["batch_size"],
        device=config["device"],
        wsi_backend=NICHE["wsi_backend"],
    threads: 2
    log:
        f"{LOGS}/niche/features/{{encoder}}/{{slide}}.log",
    benchmark:
        f"{BENCH}/niche/features/{{encoder}}/{{slide}}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/torch-gpu.yaml"
    script:
        "../../scripts/niche_features.py"
