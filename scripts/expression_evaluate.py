# Every method's folds of one dataset -> one table (rule expression_evaluate).
from tissuekd.expression.steps import evaluate_dataset
from tissuekd.logs import run_logged

w = snakemake.wildcards
run_logged(snakemake.log[0], lambda: evaluate_dataset(list(snakemake.input), w.task, w.encoder, snakemake.output[0]))
