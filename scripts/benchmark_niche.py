# Niche benchmark across slides: tidy summary, per-tissue and overall tables, ARI figure (rule benchmark_niche).
from tissuekd.logs import run_logged
from tissuekd.niche.ingest import slides_table
from tissuekd.niche.methods import from_config
from tissuekd.report.summary import write_niche_benchmark

labels = {name: m.label for name, m in from_config(snakemake.config["niche"]).items()}  # their order: the tables'
run_logged(snakemake.log[0],
           lambda: write_niche_benchmark(list(snakemake.input.metrics), dict(snakemake.output.items()), methods=labels,
                                         slides=slides_table(list(snakemake.input.slides))))
