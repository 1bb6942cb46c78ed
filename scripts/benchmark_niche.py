# Niche benchmark across slides: tidy summary, per-tissue and overall tables, ARI figure (rule benchmark_niche).
from tissuekd.logs import run_logged
from tissuekd.report.summary import write_niche_benchmark

run_logged(snakemake.log[0], lambda: write_niche_benchmark(list(snakemake.input), dict(snakemake.output.items())))
