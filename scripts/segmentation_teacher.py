# The frozen teacher: a U-Net trained on the annotated training images, on every channel
# (view multiplex) or the nuclear one only (view nuclear: the control) (rule segmentation_teacher).
import torch

from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import fit_model, read_split
from tissuekd.segmentation.train import SegTrainConfig

torch.set_num_threads(snakemake.threads)
o, p, w = snakemake.output, snakemake.params, snakemake.wildcards
run_logged(
    snakemake.log[0],
    lambda: fit_model(read_split(**p.split, nuclear_only=w.view == "nuclear"), p.backbone, o.model,
                      SegTrainConfig(**p.train, seed=p.seed), labelled_share=p.labelled, labelled_by=p.labelled_by,
                      device=p.device, precision=p.precision),
)
