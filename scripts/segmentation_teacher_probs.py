# The frozen teacher's probabilities for one shard of the training images, cached for every
# student (rule segmentation_teacher_probs).
import torch

from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import predict_probs, read_split

torch.set_num_threads(snakemake.threads)
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
run_logged(
    snakemake.log[0],
    lambda: predict_probs(read_split(**p.split, nuclear_only=w.view == "nuclear"), i.model, o[0],
                          int(w.shard), p.shards, p.device, p.precision),
)
