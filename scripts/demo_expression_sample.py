# One demo sample in the HEST layout (rule demo_expression_sample).
from pathlib import Path

from tissuekd.demo.expression import make_sample
from tissuekd.logs import run_logged

p = snakemake.params
root = Path(snakemake.output.st).parent.parent
run_logged(snakemake.log[0], lambda: make_sample(root, snakemake.wildcards.sample, p.dataset, p.patient, p.seed))
