# The expression study's tables: per dataset and across datasets (rule benchmark_expression).
from tissuekd.expression.steps import write_benchmark
from tissuekd.logs import run_logged

o = snakemake.output
run_logged(snakemake.log[0], lambda: write_benchmark(list(snakemake.input), o.by_dataset, o.overall))
