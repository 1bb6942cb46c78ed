# An external teacher's maps of one shard of the training images, in the cached layout the
# students read (rule segmentation_teacher_maps_external).
from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import external_probs, read_split

i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
run_logged(
    snakemake.log[0],
    lambda: external_probs(read_split(**p.split, nuclear_only=w.view == "nuclear"), i.maps, o[0], int(w.shard),
                           p.shards),
)
