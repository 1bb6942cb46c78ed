# One patch per spot through a frozen encoder, streamed to HDF5 (rule expression_features).
from tissuekd.expression.steps import extract_spot_features
from tissuekd.logs import run_logged

i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: extract_spot_features(i.spots, i.sample, i.image, p.encoder, snakemake.output[0], crop_px=p.crop_px,
                                  batch_size=p.batch_size, device=p.device, precision=p.precision,
                                  threads=snakemake.threads, backend=p.wsi_backend),
)
