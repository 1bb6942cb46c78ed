# Measured beside predicted expression on the tissue (rule expression_maps).
from tissuekd.expression.evaluate import plot_maps
from tissuekd.logs import run_logged

i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: plot_maps(list(i.predictions), dict(zip(p.samples, i.spots)), dict(zip(p.samples, i.expression)),
                      p.method, snakemake.output[0]),
)
