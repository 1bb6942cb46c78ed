# NOLAN-style teacher on scVI latents, then frozen -> K logits per cell (rule niche_teacher).
import torch

from tissuekd.logs import run_logged
from tissuekd.niche.steps import train_teacher
from tissuekd.niche.train import NolanConfig

torch.set_num_threads(snakemake.threads)
i, o, p = snakemake.input, snakemake.output, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: train_teacher(i.latent, i.cells, i.radius, int(snakemake.wildcards.k), NolanConfig(**p.nolan),
                          o.model, o.logits, max_neighbors=p.max_neighbors, seed=p.seed,
                          device=p.device, precision=p.precision),
)
