# Patch features of one slide through a frozen encoder (rule survival_features).
from tissuekd.logs import run_logged
from tissuekd.survival.patches import extract_patch_features

i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: extract_patch_features(i.patches, i.image, p.encoder, snakemake.output[0], crop_px=p.crop_px,
                                   batch_size=p.batch_size, device=p.device, precision=p.precision,
                                   threads=snakemake.threads, backend=p.wsi_backend),
)
