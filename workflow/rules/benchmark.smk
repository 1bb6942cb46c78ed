# Aggregates for the report: the niche, survival and expression benchmark tables and figures
# (segmentation's are in segmentation.smk), and the runtime of every rule. Each reruns whenever
# any slide or sample of its study changes (it reads them all).


rule benchmark_niche:
    input:
        metrics=niche_metrics(),
        slides=niche_slide_files(),
    output:
        summary=report(
            ensure(f"{RESULTS}/benchmark/summary.tsv", non_empty=True),
            caption="../report/summary.rst",
            category="Benchmark",
            subcategory="Niche study",
            labels={"result": f"every slide, K and method{DOWNLOADS}"},
        ),
        by_tissue=f"{RESULTS}/benchmark/niche_by_tissue.tsv",
        overall=f"{RESULTS}/benchmark/niche_overall.tsv",
        slides=f"{RESULTS}/benchmark/niche_slides.tsv",
        html=report(
            f"{RESULTS}/benchmark/niche_tables.html",
            caption="../report/tables.rst",
            category="Benchmark",
            subcategory="Niche study",
            labels={"result": "mean ± SD per tissue and overall; the slides and their H&E check"},
        ),
        bars=report(
            f"{RESULTS}/benchmark/niche_ari_by_tissue.png",
            caption="../report/ari_bars.rst",
            category="Benchmark",
            subcategory="Niche study",
            labels={"result": "ARI per tissue"},
        ),
    log:
        f"{LOGS}/benchmark/niche.log",
    benchmark:
        f"{BENCH}/benchmark/niche.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=minutes(10),
    script:
        "../../scripts/benchmark_niche.py"


rule benchmark_runtimes:
    input:
        niche_benchmarks(),
        survival_benchmarks(),
        segmentation_benchmarks(),
        expression_benchmarks(),
    output:
        table=f"{RESULTS}/benchmark/runtime.tsv",
        html=report(
            f"{RESULTS}/benchmark/runtime.html",
            caption="../report/runtime.rst",
            category="Benchmark",
            subcategory="Runtime",
            labels={"result": "runtime per rule"},
        ),
    log:
        f"{LOGS}/benchmark/runtime.log",
    benchmark:
        f"{BENCH}/benchmark/runtime.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    params:
        in_process=in_process_benchmarks(),
    script:
        "../../scripts/benchmark_runtimes.py"


rule benchmark_survival:
    input:
        survival_metrics(),
    output:
        folds=report(
            ensure(f"{RESULTS}/benchmark/survival_folds.tsv", non_empty=True),
            caption="../report/survival_folds.rst",
            category="Benchmark",
            subcategory="Survival study",
            labels={"result": f"every cohort, fold and method{DOWNLOADS}"},
        ),
        by_cohort=f"{RESULTS}/benchmark/survival_by_cohort.tsv",
        overall=f"{RESULTS}/benchmark/survival_overall.tsv",
        html=report(
            f"{RESULTS}/benchmark/survival_tables.html",
            caption="../report/survival_tables.rst",
            category="Benchmark",
            subcategory="Survival study",
            labels={"result": "C-index per cohort and across cohorts"},
        ),
    log:
        f"{LOGS}/benchmark/survival.log",
    benchmark:
        f"{BENCH}/benchmark/survival.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=minutes(10),
    script:
        "../../scripts/benchmark_survival.py"


rule benchmark_expression:
    input:
        expression_metrics(),
    output:
        by_dataset=report(
            ensure(f"{RESULTS}/benchmark/expression_by_dataset.tsv", non_empty=True),
            caption="../report/expression.rst",
            category="Benchmark",
            subcategory="Expression study",
            labels={"result": f"Pearson r per dataset, method and gene list{DOWNLOADS}"},
        ),
        overall=f"{RESULTS}/benchmark/expression_overall.tsv",
        html=report(
            f"{RESULTS}/benchmark/expression_tables.html",
            caption="../report/expression.rst",
            category="Benchmark",
            subcategory="Expression study",
            labels={"result": "Pearson r per dataset and across datasets"},
        ),
    log:
        f"{LOGS}/benchmark/expression.log",
    benchmark:
        f"{BENCH}/benchmark/expression.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    script:
        "../../scripts/benchmark_expression.py"
