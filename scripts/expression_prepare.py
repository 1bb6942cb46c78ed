# Spots, normalised expression and scale of one sample (rule expression_prepare).
from tissuekd.expression.steps import prepare_sample
from tissuekd.logs import run_logged

i, o, p = snakemake.input, snakemake.output, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: prepare_sample(p.format, i.st, i.metadata, i.image, o.spots, o.expression, o.sample, p.wsi_backend),
)
