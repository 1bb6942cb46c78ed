# A nuclear-channel student: labels only (no-kd), or distilled from the multiplex teacher (kd) or
# from the nuclear-only teacher (kd-nuclear-teacher) (rule segmentation_student).
import torch

from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import fit_model, read_split
from tissuekd.segmentation.train import SegTrainConfig

torch.set_num_threads(snakemake.threads)
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
run_logged(
    snakemake.log[0],
    lambda: fit_model(read_split(**p.split, nuclear_only=True), w.backbone, o.model,
                      SegTrainConfig(**p.train, seed=int(w.seed)), "no-kd" if w.mode == "no-kd" else "kd",
                      list(i.probs) or None, p.labelled, p.teacher, device=p.device, precision=p.precision,
                      labelled_by=p.labelled_by),
)
