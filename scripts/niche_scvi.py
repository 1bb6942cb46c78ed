# scVI on one slide's counts -> latent per cell; the model folder is kept (rule niche_scvi).
import torch

from tissuekd.logs import run_logged
from tissuekd.niche.steps import fit_scvi

torch.set_num_threads(snakemake.threads)
p = snakemake.params
run_logged(
    snakemake.log[0],
    lambda: fit_scvi(snakemake.input.expression, snakemake.output.model, snakemake.output.latent,
                     n_latent=p.n_latent, max_epochs=p.max_epochs, seed=p.seed,
                     accelerator={"cuda": "gpu"}.get(p.device, p.device)),
)
