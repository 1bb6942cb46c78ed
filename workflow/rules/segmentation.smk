# Segmentation study (docs/architecture.md): a frozen multiplex teacher distilled into
# nuclear-channel students, per data set x backbone x mode x seed; input functions in common_segmentation.smk.
GDIR = f"{RESULTS}/segmentation/{{dataset}}"


rule segmentation_check_test:
    # a test split's pixels and labels, read once before any model to be scored on it trains
    # (planning reads headers only); its arguments are taken here, not as params, and a user's
    # split is no input (seg_test_to_check), so a later change reruns only the scoring
    input:
        unpack(seg_test_to_check),
    output:
        f"{RESULTS}/segmentation/checked/{{on}}.txt",
    log:
        f"{LOGS}/segmentation/check_test/{{on}}.log",
    benchmark:
        f"{BENCH}/segmentation/check_test/{{on}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_per_image(1000, path_of=seg_test_path),
        runtime=minutes_per_gb(5, 2, path_of=seg_test_path),
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.segmentation.steps import check_split_contents

        run_in_process(log[0], lambda: check_split_contents(seg_split_kwargs(wildcards.on, "test"), output[0]))


rule segmentation_check_train:
    # a training split's pixels and labels, read once before any model trains on it, so that the
    # training and teacher-maps jobs do not each scan it whole again (a maps shard then reads its
    # share only); the split is an input and its arguments params: a changed split is read again
    input:
        unpack(seg_train_to_check),
    output:
        f"{RESULTS}/segmentation/checked/train/{{dataset}}.txt",
    log:
        f"{LOGS}/segmentation/check_train/{{dataset}}.log",
    benchmark:
        f"{BENCH}/segmentation/check_train/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_per_image(1000),
        runtime=minutes_per_gb(5, 2),
    params:
        split=lambda wildcards: seg_split_kwargs(wildcards.dataset, "train"),
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.segmentation.steps import check_split_contents

        run_in_process(log[0], lambda: check_split_contents(params.split, output[0]))


if SEG["teacher"] == "unet-multiplex":

    rule segmentation_teacher:
        input:
            unpack(seg_split_inputs),
        output:
            model=f"{GDIR}/teacher/{{view}}/model.pt",
        log:
            f"{LOGS}/segmentation/teacher/{{dataset}}/{{view}}.log",
        benchmark:
            f"{BENCH}/segmentation/teacher/{{dataset}}/{{view}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
        conda:
            "../../envs/torch-gpu.yaml"
        threads: 1
        resources:
            mem_mb=mem_per_step(2000, lambda wildcards: SEG["teacher_backbone"]),
            runtime=minutes_per_step(10),
            gpu=1,
        params:
            split=seg_split("train"),
            backbone=SEG["teacher_backbone"],
            train=SEG["train"],
            seed=0,
            labelled=SEG["labelled"],
            labelled_by=SEG["labelled_by"],
            device=config["device"],
            precision=config["precision"],
        script:
            "../../scripts/segmentation_teacher.py"

    rule segmentation_teacher_probs:
        # the teacher's maps of the training images, one shard of them per job, cached: changing a
        # student setting never reruns it
        input:
            unpack(seg_split_inputs),
            model=rules.segmentation_teacher.output.model,
        output:
            f"{GDIR}/teacher/{{view}}/probs/{{shard}}.npz",
        log:
            f"{LOGS}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.log",
        benchmark:
            f"{BENCH}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
            shard=r"\d+",
        conda:
            "../../envs/torch-gpu.yaml"
        threads: 1
        resources:
            mem_mb=mem_per_image(2000, sharded=True),
            runtime=minutes_per_gb(5, 30, sharded=True),  # CPU: ~0.1 MP/s (bench.segmentation)
            gpu=1,
        params:
            split=seg_split("train"),
            shards=seg_shards_of_job,
            device=config["device"],
            precision=config["precision"],
        script:
            "../../scripts/segmentation_teacher_probs.py"

elif SEG["teacher"] == "external":

    rule segmentation_teacher_maps_external:
        # an external teacher (segmentation.teacher external): its maps of one shard of the training
        # images, from the file the sheet names, in the U-Net teacher's cached layout; its own
        # name, so that the SLURM profile's GPU for segmentation_teacher_probs is not asked
        input:
            unpack(seg_split_inputs),
            unpack(seg_external_maps),
        output:
            f"{GDIR}/teacher/{{view}}/probs/{{shard}}.npz",
        log:
            f"{LOGS}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.log",
        benchmark:
            f"{BENCH}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
            shard=r"\d+",
        conda:
            "../../envs/torch-gpu.yaml"
        resources:
            mem_mb=mem_per_image(2000, sharded=True),
            runtime=minutes_per_gb(5, 5, sharded=True),
        params:
            split=seg_split("train"),
            shards=seg_shards_of_job,
        script:
            "../../scripts/segmentation_external_probs.py"

elif SEG["teacher"] == "sam":

    rule segmentation_teacher_probs:
        # SAM (segmentation.teacher sam) on one shard of the training images, in the cached layout
        input:
            unpack(seg_split_inputs),
            weights=SEG["sam"]["checkpoint"],
        output:
            f"{GDIR}/teacher/{{view}}/probs/{{shard}}.npz",
        log:
            f"{LOGS}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.log",
        benchmark:
            f"{BENCH}/segmentation/teacher_probs/{{dataset}}/{{view}}/{{shard}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
            shard=r"\d+",
        conda:
            "../../envs/torch-gpu.yaml"
        threads: 1
        resources:
            mem_mb=mem_per_image(12000, sharded=True),
            runtime=minutes_per_gb(10, 15, sharded=True),  # GPU: ~2 s an image
            gpu=1,
        params:
            split=seg_split("train"),
            shards=seg_shards_of_job,
            sam=SEG["sam"],
            device=config["device"],
        script:
            "../../scripts/segmentation_sam_maps.py"

    rule segmentation_sam_test_maps:
        # SAM's maps of the test split, keyed by image id: its oracle row
        input:
            unpack(seg_test_split_of_dataset),
            weights=SEG["sam"]["checkpoint"],
        output:
            f"{GDIR}/teacher/{{view}}/test_maps.npz",
        log:
            f"{LOGS}/segmentation/sam_test_maps/{{dataset}}/{{view}}.log",
        benchmark:
            f"{BENCH}/segmentation/sam_test_maps/{{dataset}}/{{view}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
        conda:
            "../../envs/torch-gpu.yaml"
        threads: 1
        resources:
            mem_mb=mem_per_image(12000, split="test"),
            runtime=minutes_per_gb(10, 15, split="test"),
            gpu=1,
        params:
            split=lambda wildcards: seg_split_kwargs(wildcards.dataset, "test"),
            sam=SEG["sam"],
            device=config["device"],
        script:
            "../../scripts/segmentation_sam_maps.py"


if SEG["teacher"] != "unet-multiplex":

    rule segmentation_evaluate_external:
        # the external teacher (the oracle row) scored from its maps of its own test split
        input:
            unpack(seg_test_inputs),
            maps=seg_teacher_test_maps,
        output:
            f"{GDIR}/teacher/{{view}}/scores_on_{{on}}.tsv",
        log:
            f"{LOGS}/segmentation/evaluate/{{dataset}}/teacher/{{view}}/{{on}}.log",
        benchmark:
            f"{BENCH}/segmentation/evaluate/{{dataset}}/teacher/{{view}}/{{on}}.tsv"
        wildcard_constraints:
            view="multiplex|nuclear",
        conda:
            "../../envs/torch-gpu.yaml"
        resources:
            mem_mb=mem_per_image(2000, split="test"),
            runtime=minutes_per_gb(5, 10, split="test"),
        params:
            split=seg_test_split,
        script:
            "../../scripts/segmentation_evaluate_external.py"

    ruleorder: segmentation_evaluate_external > segmentation_evaluate


rule segmentation_student:
    input:
        unpack(seg_split_inputs),
        probs=seg_teacher_probs,
    output:
        model=f"{GDIR}/students/{{backbone}}/{{mode}}/seed{{seed}}/model.pt",
    log:
        f"{LOGS}/segmentation/student/{{dataset}}/{{backbone}}/{{mode}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/segmentation/student/{{dataset}}/{{backbone}}/{{mode}}/seed{{seed}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=mem_per_step(2000, lambda wildcards: wildcards.backbone),
        runtime=minutes_per_step(10),
        gpu=1,
    params:
        split=seg_split("train"),
        train=SEG["train"],
        labelled=SEG["labelled"],
        labelled_by=SEG["labelled_by"],
        teacher=lambda wildcards: SEG_TEACHERS[wildcards.mode],
        device=config["device"],
        precision=config["precision"],
    script:
        "../../scripts/segmentation_student.py"


rule segmentation_evaluate:
    # run:, as survival_features: 50 small scoring jobs would each spend longer starting Python
    # and torch than scoring; locally they run inside Snakemake's process (profiles/default)
    input:
        unpack(seg_test_inputs),
        model=f"{GDIR}/{{model}}/model.pt",
    output:
        f"{GDIR}/{{model}}/scores_on_{{on}}.tsv",
    log:
        f"{LOGS}/segmentation/evaluate/{{dataset}}/{{model}}/{{on}}.log",
    benchmark:
        f"{BENCH}/segmentation/evaluate/{{dataset}}/{{model}}/{{on}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_per_image(2000, split="test"),
        runtime=minutes_per_gb(5, 30, split="test"),
    params:
        split=seg_test_split,
        device=config["device"],
        precision=config["precision"],
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.segmentation.steps import evaluate_model

        run_in_process(
            log[0],
            lambda: evaluate_model(params.split, input.model, output[0], threads, params.device, params.precision),
            exclusive=True,
        )


rule segmentation_panel:
    input:
        unpack(seg_panel_inputs),
    output:
        report(
            f"{GDIR}/panel.png",
            caption="../report/segmentation_panel.rst",
            category="Segmentation",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}"},
        ),
    log:
        f"{LOGS}/segmentation/panel/{{dataset}}.log",
    benchmark:
        f"{BENCH}/segmentation/panel/{{dataset}}.tsv"
    conda:
        "../../envs/torch-gpu.yaml"
    threads: 1
    resources:
        mem_mb=mem_per_image(2000, split="test"),
        runtime=minutes(10),
    params:
        split=lambda wildcards: seg_split_kwargs(wildcards.dataset, "test"),
        titles=seg_panel_titles,
    script:
        "../../scripts/segmentation_panel.py"


rule benchmark_segmentation:
    input:
        segmentation_scores(),
    output:
        by_dataset=report(
            ensure(f"{RESULTS}/benchmark/segmentation_by_dataset.tsv", non_empty=True),
            caption="../report/segmentation_tables.rst",
            category="Benchmark",
            subcategory="Segmentation study",
            labels={"result": f"every test set, model and mode{DOWNLOADS}"},
        ),
        overall=f"{RESULTS}/benchmark/segmentation_overall.tsv",
        html=report(
            f"{RESULTS}/benchmark/segmentation_tables.html",
            caption="../report/segmentation_tables.rst",
            category="Benchmark",
            subcategory="Segmentation study",
            labels={"result": "Dice, F1, recovery and parameters per model and test set"},
        ),
    log:
        f"{LOGS}/benchmark/segmentation.log",
    benchmark:
        f"{BENCH}/benchmark/segmentation.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    script:
        "../../scripts/benchmark_segmentation.py"
