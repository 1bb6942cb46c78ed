# The segmentation demo: TissueNet-layout splits and a BBBC038-layout folder (rule demo_segmentation).
from tissuekd.demo.segmentation import write_bbbc038, write_tissuenet
from tissuekd.logs import run_logged

o, p = snakemake.output, snakemake.params


def make():
    held_out = max(2, p.images // 4)  # val and test: a quarter of the training tiles each
    splits = {"train": (p.images, p.seed), "val": (held_out, p.seed + 1), "test": (held_out, p.seed + 2)}
    for split, (count, seed) in splits.items():
        write_tissuenet(getattr(o, split), count, p.px, seed=seed)
    write_bbbc038(o.bbbc038, seed=p.seed)


run_logged(snakemake.log[0], make)
