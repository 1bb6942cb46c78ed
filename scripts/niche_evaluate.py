# ARI / NMI / JSD / probe F1 on test-strip cells for every method (rule niche_evaluate).
from tissuekd.logs import run_logged
from tissuekd.niche.evaluate import evaluate_slide
from tissuekd.niche.methods import from_config

i, w = snakemake.input, snakemake.wildcards
methods = from_config(snakemake.config["niche"])
run_logged(
    snakemake.log[0],
    lambda: evaluate_slide(i.cells, i.split, i.teacher, {m: i[m] for m in methods}, snakemake.output[0],
                           slide=w.slide, tissue=snakemake.params.tissue, k=int(w.k), encoder=w.encoder,
                           labels=i.labels, methods=methods),
)
