# An external teacher: K logits per cell_id from elsewhere, checked and aligned (rule niche_teacher_external).
import pandas as pd

from tissuekd.logs import run_logged
from tissuekd.niche.tables import read_logits, write_logits


def main():
    cells = pd.read_parquet(snakemake.input.cells)
    logits = read_logits(snakemake.input.logits, cells, int(snakemake.wildcards.k))
    write_logits(snakemake.output.logits, cells, logits)


run_logged(snakemake.log[0], main)
