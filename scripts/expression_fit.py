# CMRCNet or its contrastive-only ablation on one leave-one-patient-out fold (rule expression_train).
from tissuekd.expression.steps import fit_fold
from tissuekd.logs import run_logged

i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
run_logged(
    snakemake.log[0],
    lambda: fit_fold(w.method, w.fold, p.fold["samples"], p.fold["patients"], list(i.features), list(i.expression),
                     p.markers, p.settings, o.predictions, o.pcc, o.summary, o.get("model"), seed=p.seed,
                     device=p.device, precision=p.precision, threads=snakemake.threads,
                     patches=list(i.get("patches", [])), encoder=p.encoder),
)
