# Teacher, student and baseline niche maps side by side (rule niche_maps).
from tissuekd.logs import run_logged
from tissuekd.niche.evaluate import plot_maps
from tissuekd.niche.methods import from_config

i, w = snakemake.input, snakemake.wildcards
methods = from_config(snakemake.config["niche"])
run_logged(
    snakemake.log[0],
    lambda: plot_maps(i.cells, i.split, i.teacher, {m: i[m] for m in methods}, snakemake.output[0],
                      title=f"{w.slide}, K={w.k}, {w.encoder}", labels=i.labels, methods=methods),
)
