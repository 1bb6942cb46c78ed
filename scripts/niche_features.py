# One H&E crop per cell through a frozen encoder, streamed to HDF5 (rule niche_features).
from tissuekd.logs import run_logged
from tissuekd.niche.features import extract_cell_features

i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: extract_cell_features(
        i.cells,
        i.slide,
        i.he_image,
        p.encoder,
        snakemake.output[0],
        crop_px=p.crop_px,
        batch_size=p.batch_size,
        device=p.device,
        precision=p.precision,
        threads=snakemake.threads,
        backend=p.wsi_backend,
    ),
)
