# Density-adaptive neighbourhood radius from the slide's non-test cells (rule niche_radius).
from tissuekd.logs import run_logged
from tissuekd.niche.split import fit_radius

p = snakemake.params
run_logged(
    snakemake.log[0],
    lambda: fit_radius(snakemake.input.cells, snakemake.output[0], target=p.target, n_strips=p.n_strips,
                       test_strip=p.test_strip),
)
