# Survival benchmark across cohorts: every fold, per cohort, across cohorts (rule benchmark_survival).
from tissuekd.logs import run_logged
from tissuekd.report.survival import write_survival_benchmark

run_logged(snakemake.log[0], lambda: write_survival_benchmark(list(snakemake.input), dict(snakemake.output.items())))
