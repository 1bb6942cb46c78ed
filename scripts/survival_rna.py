# The cohort's RNA as given (a matrix, a GDC download), read and checked once (rule survival_rna).
from tissuekd.logs import run_logged
from tissuekd.survival.rna import write_cohort_rna

i, p = snakemake.input, snakemake.params
run_logged(snakemake.log[0], lambda: write_cohort_rna(i.rna, set(p.patients), p.star_value, snakemake.output[0]))
