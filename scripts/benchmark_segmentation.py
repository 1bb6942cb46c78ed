# The segmentation study's tables: per training/test set and overall (rule benchmark_segmentation).
from tissuekd.io.atomic import atomic_path
from tissuekd.logs import run_logged
from tissuekd.segmentation.tables import by_dataset, overall, read_scores


def write():
    scores = read_scores(list(snakemake.input))
    for table, out in ((by_dataset(scores), snakemake.output.by_dataset), (overall(scores), snakemake.output.overall)):
        with atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


run_logged(snakemake.log[0], write)
