# Expression study (docs/architecture.md): spot expression from the H&E under each spot, per
# sample (prepare, features), then per dataset x leave-one-patient-out fold x method; input
# functions in common_expression.smk.
XFOLD = f"{XDIR}/{{task}}/{{encoder}}/folds/{{fold}}/{{method}}"


rule expression_prepare:
    # run: inside Snakemake's process, as survival_patches: a sample takes a second or two,
    # starting Python and importing scanpy took five
    input:
        unpack(expression_sample_inputs),
    output:
        spots=f"{XDIR}/samples/{{sample}}/spots.parquet",
        expression=f"{XDIR}/samples/{{sample}}/expression.h5ad",
        sample=f"{XDIR}/samples/{{sample}}/sample.json",
    log:
        f"{LOGS}/expression/prepare/{{sample}}.log",
    benchmark:
        f"{BENCH}/expression/prepare/{{sample}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=expression_prepare_mb,
        runtime=minutes(10),
    params:
        format=expression_value("format"),
        pseudo_spots=EXPRESSION["pseudo_spots"],
        wsi_backend=EXPRESSION["wsi_backend"],
    run:
        from tissuekd.expression.steps import prepare_sample
        from tissuekd.logs import run_in_process

        dataset = EXPR_SAMPLES.loc[wildcards.sample, "dataset"]
        run_in_process(
            log[0],
            lambda: prepare_sample(
                params.format,
                input.get("image"),
                output.spots,
                output.expression,
                output.sample,
                st=input.get("st"),
                metadata=input.get("metadata"),
                tissue_seg=input.get("tissue_seg"),
                outs=str(Path(input.matrix).parent) if "matrix" in input.keys() else None,
                cells=input.get("cells"),
                cell_counts=input.get("cell_counts"),
                slide=input.get("slide"),
                name=wildcards.sample,
                pseudo_spots=params.pseudo_spots,
                backend=params.wsi_backend,
                # read here, not a param: editing the markers reruns the folds only
                markers=EXPRESSION["markers"].get(dataset, []),
                dataset=dataset,
                # checked here (its index only), not an input: the features job reads it
                patches=EXPR_SAMPLES.loc[wildcards.sample].get("patches") or None,
            ),
        )


rule expression_features:
    # run: inside Snakemake's process, as survival_features: a demo sample's spots take a second,
    # starting Python and building the encoder took ten (a cluster job still runs alone)
    input:
        unpack(expression_feature_inputs),
    output:
        ensure(f"{XDIR}/features/{{encoder}}/{{sample}}.h5", non_empty=True),
    log:
        f"{LOGS}/expression/features/{{encoder}}/{{sample}}.log",
    benchmark:
        f"{BENCH}/expression/features/{{encoder}}/{{sample}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 2
    resources:
        mem_mb=encoder_mem_mb,
        runtime=minutes(30),
        gpu=1,
    params:
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        crop_px=encoder_input_px,
        batch_size=EXPRESSION["batch_size"],
        device=config["device"],
        precision=encoder_precision,
        wsi_backend=EXPRESSION["wsi_backend"],
        patch_mpp=EXPRESSION["patch_mpp"],
    run:
        from tissuekd.expression.steps import extract_spot_features
        from tissuekd.logs import run_in_process

        run_in_process(
            log[0],
            lambda: extract_spot_features(
                input.spots,
                input.sample,
                input.get("image"),
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
                patches=input.get("patches"),
                patch_mpp=params.patch_mpp,
            ),
            exclusive=True,  # torch's thread count and the encoder cache are the process's
        )


rule expression_patches:
    # fine-tuning only (expression.cmrcnet.finetune_blocks > 0): the patches expression_features
    # encodes, stored at the encoder's input size for the folds to read through the encoder.
    # run: inside Snakemake's process, as expression_features
    input:
        unpack(expression_feature_inputs),
    output:
        ensure(f"{XDIR}/patches/{{encoder}}/{{sample}}.h5", non_empty=True),
    log:
        f"{LOGS}/expression/patches/{{encoder}}/{{sample}}.log",
    benchmark:
        f"{BENCH}/expression/patches/{{encoder}}/{{sample}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=minutes(30),
    params:
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        crop_px=encoder_input_px,
        batch_size=EXPRESSION["batch_size"],
        wsi_backend=EXPRESSION["wsi_backend"],
        patch_mpp=EXPRESSION["patch_mpp"],
    run:
        from tissuekd.expression.steps import extract_spot_patches
        from tissuekd.logs import run_in_process

        run_in_process(
            log[0],
            lambda: extract_spot_patches(
                input.spots,
                input.sample,
                input.get("image"),
                params.encoder,
                output[0],
                crop_px=params.crop_px,
                batch_size=params.batch_size,
                backend=params.wsi_backend,
                patches=input.get("patches"),
                patch_mpp=params.patch_mpp,
            ),
        )


rule expression_train:
    # CMRCNet and its contrastive-only ablation: trained on the fold's training patients
    # (fine-tuning the encoder's tail: on their patches too)
    input:
        unpack(expression_train_inputs),
    output:
        predictions=f"{XFOLD}/predictions.parquet",
        pcc=f"{XFOLD}/pcc.tsv",
        summary=f"{XFOLD}/summary.tsv",
        model=f"{XFOLD}/model.pt",
    log:
        f"{LOGS}/expression/train/{{encoder}}/{{task}}/{{fold}}/{{method}}.log",
    benchmark:
        f"{BENCH}/expression/train/{{encoder}}/{{task}}/{{fold}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(EXPR_TRAINED) or "NO_METHOD",
        fold="[^/]+",
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=expression_train_mb,
        runtime=lambda wildcards, input, attempt: round(10 + input.size_mb / 100) * attempt,
        gpu=1,
    params:
        fold=expression_fold_params,
        markers=lambda wildcards: EXPRESSION["markers"].get(wildcards.task, []),
        settings=EXPRESSION["cmrcnet"],
        encoder=lambda wildcards: ENCODERS[wildcards.encoder],
        seed=EXPRESSION["seed"],
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/expression_fit.py"


rule expression_baseline:
    # ridge (the HEST benchmark's), k-NN on the frozen features, random retrieval (the floor).
    # run: inside Snakemake's process (profiles/default: force-use-threads), as survival_features:
    # each fit takes a second, starting Python and importing torch took five
    input:
        unpack(expression_fold_inputs),
    output:
        predictions=f"{XFOLD}/predictions.parquet",
        pcc=f"{XFOLD}/pcc.tsv",
        summary=f"{XFOLD}/summary.tsv",
    log:
        f"{LOGS}/expression/baseline/{{encoder}}/{{task}}/{{fold}}/{{method}}.log",
    benchmark:
        f"{BENCH}/expression/baseline/{{encoder}}/{{task}}/{{fold}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(EXPR_BASELINES) or "NO_METHOD",
        fold="[^/]+",
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: round(2000 + 3 * input.size_mb) * attempt,
        runtime=lambda wildcards, input, attempt: round(10 + input.size_mb / 100) * attempt,
    params:
        fold=expression_fold_params,
        markers=lambda wildcards: EXPRESSION["markers"].get(wildcards.task, []),
        # the retrieval settings only: CMRCNet's epochs do not rerun the baselines
        settings={key: EXPRESSION["cmrcnet"][key] for key in ("top_k", "index", "nprobe")},
        seed=EXPRESSION["seed"],
    run:
        from tissuekd.expression.steps import fit_fold
        from tissuekd.logs import run_in_process

        run_in_process(
            log[0],
            lambda: fit_fold(
                wildcards.method,
                wildcards.fold,
                params.fold["samples"],
                params.fold["patients"],
                list(input.features),
                list(input.expression),
                params.markers,
                params.settings,
                output.predictions,
                output.pcc,
                output.summary,
                seed=params.seed,
                device="cpu",
            ),
        )


rule expression_evaluate:
    input:
        expression_summaries,
    output:
        f"{XDIR}/{{task}}/{{encoder}}/metrics.tsv",
    log:
        f"{LOGS}/expression/evaluate/{{encoder}}/{{task}}.log",
    benchmark:
        f"{BENCH}/expression/evaluate/{{encoder}}/{{task}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    script:
        "../../scripts/expression_evaluate.py"


rule expression_maps:
    # measured beside predicted expression on the tissue, per test sample (the first trained method)
    input:
        unpack(expression_map_inputs),
    output:
        report(
            f"{XDIR}/{{task}}/{{encoder}}/maps.png",
            caption="../report/expression_maps.rst",
            category="Expression maps",
            subcategory="{task}",
            labels={"result": "maps", "encoder": "{encoder}"},
        ),
    log:
        f"{LOGS}/expression/maps/{{encoder}}/{{task}}.log",
    benchmark:
        f"{BENCH}/expression/maps/{{encoder}}/{{task}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=minutes(10),
    params:
        method=EXPRESSION["methods"][0],
        samples=lambda wildcards: list(expression_rows(wildcards.task)["sample"]),
    script:
        "../../scripts/expression_maps.py"
