# The slide's per-cell annotations (cell types, pathology, known niches) on its cells (rule niche_labels).
from tissuekd.logs import run_logged
from tissuekd.niche.ingest import write_labels

i = snakemake.input
run_logged(
    snakemake.log[0],
    lambda: write_labels(i.cells, snakemake.output[0], snakemake.params.bundle, cell_types=i.get("cell_types"),
                         pathology=i.get("pathology"), truth=i.get("niche_truth")),
)
