# Cross-validated distilled method (the AMKD student), from the frozen teacher of each fold (rule survival_student).
from tissuekd.logs import run_logged
from tissuekd.survival.methods import from_config
from tissuekd.survival.steps import train_method

i, p, o = snakemake.input, snakemake.params, snakemake.output
method = from_config(snakemake.config["survival"])[snakemake.wildcards.method]
run_logged(
    snakemake.log[0],
    lambda: train_method(method, i.patients, i.rna, o.models, o.predictions, train=p.train, amkd=p.amkd,
                         gene_sets=i.gene_sets or None, teacher_models=i.teacher, device=p.device,
                         precision=p.precision, threads=snakemake.threads),
)
