# The expression study's tables: per dataset and across datasets (rule benchmark_expression).
from tissuekd.logs import run_logged
from tissuekd.report.expression import write_expression_benchmark

run_logged(snakemake.log[0], lambda: write_expression_benchmark(list(snakemake.input), dict(snakemake.output.items())))
