# SAM's maps (segmentation.teacher sam): one shard of the training images in the cached layout
# (rule segmentation_teacher_probs), or the test split keyed by image id (rule segmentation_sam_test_maps).
import torch

from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import read_split, sam_maps

torch.set_num_threads(snakemake.threads)
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
shard = int(w.get("shard", 0))
run_logged(
    snakemake.log[0],
    lambda: sam_maps(read_split(**p.split, nuclear_only=w.view == "nuclear"), {**p.sam, "checkpoint": i.weights},
                     o[0], shard, p.get("shards", 1), p.device, keyed="shard" not in w.keys()),
)
