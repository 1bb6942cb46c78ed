# Cross-validated AMKD student, distilled from the frozen teacher of each fold (rule survival_student).
from tissuekd.logs import run_logged
from tissuekd.survival.steps import train_method

i, p, o = snakemake.input, snakemake.params, snakemake.output
run_logged(
    snakemake.log[0],
    lambda: train_method("student", i.patients, i.rna, o.models, o.predictions, train=p.train, amkd=p.amkd,
                         gene_sets=i.gene_sets or None, teacher_models=i.teacher, device=p.device,
                         precision=p.precision, threads=snakemake.threads),
)
