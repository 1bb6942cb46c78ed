# C-index per fold for every method and Kaplan-Meier curves of the student (rule survival_evaluate).
from tissuekd.logs import run_logged
from tissuekd.survival.methods import from_config
from tissuekd.survival.steps import evaluate_cohort

i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
predictions = {m: i[m] for m in from_config(snakemake.config["survival"])}
run_logged(
    snakemake.log[0],
    lambda: evaluate_cohort(predictions, i.km_models, o.metrics, o.km, cohort=w.cohort, encoder=w.encoder,
                            endpoint=snakemake.params.endpoint),
)
