# The training cohort's models applied, unchanged, to another cohort (rule survival_external).
from tissuekd.logs import run_logged
from tissuekd.survival.steps import evaluate_external

i, o, w, p = snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params
models = {m: i[f"{m}_models"] for m in ("student", "pathology", "teacher", "rna") if f"{m}_models" in i.keys()}
run_logged(
    snakemake.log[0],
    lambda: evaluate_external(models, i.patients, i.rna, o.metrics, o.km, trained_on=w.cohort, cohort=w.test,
                              encoder=w.encoder, endpoint=p.endpoint, device=p.device, precision=p.precision),
)
