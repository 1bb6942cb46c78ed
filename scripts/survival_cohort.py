# Usable patients, RNA and folds of one cohort; dropped patients with reasons (rule survival_cohort).
import pandas as pd

from tissuekd.logs import run_logged
from tissuekd.survival.cohort import prepare_cohort

i, p, o = snakemake.input, snakemake.params, snakemake.output
run_logged(
    snakemake.log[0],
    lambda: prepare_cohort(snakemake.wildcards.cohort, pd.DataFrame(p.slides), i.clinical, i.get("rna"),
                           endpoint=p.endpoint, folds=p.folds, seed=p.seed, cross_validate=p.cross_validate,
                           out_patients=o.patients, out_rna=o.rna, out_dropped=o.dropped),
)
