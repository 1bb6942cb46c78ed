# The segmentation study's tables: per training/test set and overall, as TSV and as one HTML page
# for the report (rule benchmark_segmentation).
from tissuekd.io.atomic import atomic_path
from tissuekd.logs import run_logged
from tissuekd.report.summary import write_html
from tissuekd.segmentation.tables import CROSS_NOTE, by_dataset, overall, read_scores


def write():
    scores = read_scores(list(snakemake.input))
    per_set, whole = by_dataset(scores), overall(scores)
    for table, out in ((per_set, snakemake.output.by_dataset), (whole, snakemake.output.overall)):
        with atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    write_html([("Segmentation study: each model over its own test sets (mean and SD over images and seeds)", whole,
                 "segmentation-overall"),
                ("Every training set and test set", per_set, "segmentation-by-dataset", CROSS_NOTE)],
               snakemake.output.html)


run_logged(snakemake.log[0], write)
