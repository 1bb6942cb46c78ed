# Spots, normalised expression and scale of one sample (rule expression_prepare).
from pathlib import Path

from tissuekd.expression.steps import prepare_sample
from tissuekd.logs import run_logged

i, o, p = snakemake.input, snakemake.output, snakemake.params
outs = str(Path(i.matrix).parent) if "matrix" in i.keys() else None
run_logged(
    snakemake.log[0],
    lambda: prepare_sample(p.format, i.image, o.spots, o.expression, o.sample, st=i.get("st"),
                           metadata=i.get("metadata"), outs=outs, cells=i.get("cells"),
                           cell_counts=i.get("cell_counts"), slide=i.get("slide"), name=snakemake.wildcards.sample,
                           pseudo_spots=p.pseudo_spots, backend=p.wsi_backend),
)
