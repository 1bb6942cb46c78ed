# H&E student distilled from the frozen teacher on train-strip cells (rule niche_student).
import torch

from tissuekd.logs import run_logged
from tissuekd.niche.steps import train_student
from tissuekd.niche.train import StudentConfig

torch.set_num_threads(snakemake.threads)
i, o, p = snakemake.input, snakemake.output, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: train_student(i.features, i.cells, i.split, i.radius, i.teacher, int(snakemake.wildcards.k),
                          StudentConfig(**p.student), o.model, o.logits, max_neighbors=p.max_neighbors, seed=p.seed,
                          device=p.device, precision=p.precision),
)
