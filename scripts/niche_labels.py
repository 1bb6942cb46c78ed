# The sheet's per-cell annotations (pathology, known niches) on the slide's cells (rule niche_labels).
from tissuekd.logs import run_logged
from tissuekd.niche.ingest import write_labels

i = snakemake.input
run_logged(
    snakemake.log[0],
    lambda: write_labels(i.cells, snakemake.output[0], pathology=i.get("pathology"), truth=i.get("niche_truth")),
)
