# Xenium bundle + H&E -> registered cell table, counts, slide metadata (rule niche_ingest).
from tissuekd.logs import run_logged
from tissuekd.niche.ingest import ingest_slide

i, o = snakemake.input, snakemake.output
run_logged(
    snakemake.log[0],
    lambda: ingest_slide(
        snakemake.params.bundle,
        i.he_image,
        i.he_alignment,
        o.cells,
        o.expression,
        o.slide,
        cell_types=i.get("cell_types"),
        backend=snakemake.params.wsi_backend,
        mpp_tolerance=snakemake.params.mpp_tolerance,
    ),
)
