# Train / buffer / test role per cell for one encoder's crop reach (rule niche_split).
from tissuekd.logs import run_logged
from tissuekd.niche.split import write_split

i, p = snakemake.input, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: write_split(i.cells, i.slide, i.radius, snakemake.output[0], crop_px=p.crop_px, encoder_mpp=p.encoder_mpp),
)
