# The external teacher scored from its maps of its own test split (rule segmentation_evaluate_external).
from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import evaluate_maps

run_logged(snakemake.log[0], lambda: evaluate_maps(snakemake.params.split, snakemake.input.maps, snakemake.output[0]))
