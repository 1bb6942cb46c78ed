# Histology NOLAN baseline: the teacher's method, self-supervised on H&E features (rule niche_hist_nolan).
import torch

from tissuekd.logs import run_logged
from tissuekd.niche.steps import histology_nolan
from tissuekd.niche.train import NolanConfig

torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: histology_nolan(i.features, i.cells, i.split, i.radius, int(snakemake.wildcards.k), NolanConfig(**p.nolan),
                            snakemake.output.logits, max_neighbors=p.max_neighbors, seed=p.seed,
                            device=p.device, precision=p.precision),
)
