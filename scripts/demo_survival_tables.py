# A demo cohort's TCGA-CDR clinical table, RNA matrix and gene sets (rule demo_survival_tables).
from tissuekd.demo.survival import DEMO_COHORTS, make_cohort_tables, write_gene_sets
from tissuekd.logs import run_logged

o, p, cohort = snakemake.output, snakemake.params, DEMO_COHORTS[snakemake.wildcards.cohort]


def write():
    make_cohort_tables(p.patients, o.clinical, o.rna, p.seed, cohort["cancer_type"], cohort["genes_by_samples"])
    write_gene_sets(o.gene_sets)


run_logged(snakemake.log[0], write)
