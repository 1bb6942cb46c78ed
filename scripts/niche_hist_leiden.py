# Histology Leiden baseline: Leiden on H&E features with K clusters (rule niche_hist_leiden).
from tissuekd.logs import run_logged
from tissuekd.niche.baselines import histology_leiden

i = snakemake.input
run_logged(
    snakemake.log[0],
    lambda: histology_leiden(i.features, i.cells, int(snakemake.wildcards.k), snakemake.output[0],
                             seed=snakemake.params.seed),
)
