# Survival benchmark across cohorts: every fold, per cohort, across cohorts (rule benchmark_survival).
from tissuekd.logs import run_logged
from tissuekd.report.survival import write_survival_benchmark
from tissuekd.survival.methods import from_config

methods = list(from_config(snakemake.config["survival"]))  # the tables' method order
run_logged(snakemake.log[0],
           lambda: write_survival_benchmark(list(snakemake.input), dict(snakemake.output.items()), methods=methods))
