# Tissue mask, patch grid and thumbnail of one slide (rule survival_patches).
from tissuekd.logs import run_logged
from tissuekd.survival.patches import make_patches

p, o = snakemake.params, snakemake.output
run_logged(
    snakemake.log[0],
    lambda: make_patches(snakemake.input.image, o.patches, o.thumbnail, magnification=p.magnification,
                         patch_px=p.patch_px, min_tissue=p.min_tissue, mpp=float(p.mpp) if p.mpp else None,
                         backend=p.wsi_backend),
)
