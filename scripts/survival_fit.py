# Cross-validated fitted method: teacher, pathology-only or RNA-only survival model (rule survival_fit).
from tissuekd.logs import run_logged
from tissuekd.survival.methods import from_config
from tissuekd.survival.steps import train_method

i, p, o = snakemake.input, snakemake.params, snakemake.output
method = from_config(snakemake.config["survival"])[snakemake.wildcards.method]
run_logged(
    snakemake.log[0],
    lambda: train_method(method, i.patients, i.rna, o.models, o.predictions, train=p.train,
                         gene_sets=i.gene_sets or None, device=p.device, precision=p.precision,
                         threads=snakemake.threads),
)
