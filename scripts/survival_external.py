# The training cohort's models applied, unchanged, to another cohort (rule survival_external).
from tissuekd.logs import run_logged
from tissuekd.survival.steps import evaluate_external

i, o, w, p = snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params
# {method}_models, as the rule's input function lists them (the methods whose inputs the test cohort has)
models = {name.removesuffix("_models"): path for name, path in i.items() if name.endswith("_models")}
run_logged(
    snakemake.log[0],
    lambda: evaluate_external(models, i.patients, i.rna, o.metrics, o.km, trained_on=w.cohort, cohort=w.test,
                              encoder=w.encoder, endpoint=p.endpoint, device=p.device, precision=p.precision),
)
