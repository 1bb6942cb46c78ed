# One demo whole-slide image as an Aperio SVS (rule demo_survival_slide).
from tissuekd.demo.survival import DEMO_COHORTS, make_slide
from tissuekd.logs import run_logged

w, p = snakemake.wildcards, snakemake.params
run_logged(
    snakemake.log[0],
    lambda: make_slide(snakemake.output[0], p.patient, p.seed, DEMO_COHORTS[w.cohort]["stain_shift"]),
)
