# Write one synthetic Xenium bundle + H&E (rule demo_xenium_slide).
from tissuekd.demo.xenium import make_demo_slide
from tissuekd.logs import run_logged

p = snakemake.params
run_logged(
    snakemake.log[0],
    lambda: make_demo_slide(p.outdir, snakemake.wildcards.tissue, n_cells=p.n_cells, seed=p.seed),
)
