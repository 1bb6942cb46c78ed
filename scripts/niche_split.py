# Train / buffer / test role per cell (rule niche_split).
from tissuekd.logs import run_logged
from tissuekd.niche.split import write_split

run_logged(
    snakemake.log[0],
    lambda: write_split(snakemake.input.cells, snakemake.input.radius, snakemake.output[0]),
)
