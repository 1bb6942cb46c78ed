# The report's figure of a data set: inputs, labels, teacher and students side by side (rule segmentation_panel).
import torch

from tissuekd.logs import run_logged
from tissuekd.segmentation.steps import panel

torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
run_logged(snakemake.log[0], lambda: panel(p.split, dict(zip(p.titles, i.models)), snakemake.output[0]))
