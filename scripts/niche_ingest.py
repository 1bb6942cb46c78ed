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
        backend=snakemake.params.wsi_backend,
        # read here, not a param: it only decides whether ingest may pass, so changing it must not
        # rerun the slides that passed (a param would rerun every slide's whole chain)
        mpp_tolerance=snakemake.config["niche"]["he_mpp_tolerance"],
        sheet_mpp=float(snakemake.params.he_mpp) if snakemake.params.he_mpp else None,
    ),
)
