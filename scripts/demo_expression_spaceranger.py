# One demo sample in Space Ranger's layout (rule demo_expression_spaceranger).
from pathlib import Path

from tissuekd.demo.expression import make_spaceranger_sample
from tissuekd.logs import run_logged

p, w = snakemake.params, snakemake.wildcards
root = Path(snakemake.output.image).parent.parent
run_logged(snakemake.log[0], lambda: make_spaceranger_sample(root, w.sample, p.dataset, p.seed))
