# Wall time and peak memory per rule from the benchmark files (rule benchmark_runtimes).
from tissuekd.io.atomic import atomic_path
from tissuekd.logs import run_logged
from tissuekd.report.summary import runtimes


def write():
    table = runtimes(list(snakemake.input), f"{snakemake.config['results']}/benchmarks", snakemake.params.in_process)
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


run_logged(snakemake.log[0], write)
