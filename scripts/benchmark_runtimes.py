# Wall time and peak memory per rule from the benchmark files, as TSV and as an HTML page for the
# report (rule benchmark_runtimes).
from tissuekd.io.atomic import atomic_path
from tissuekd.logs import run_logged
from tissuekd.report.summary import runtimes, write_html


def write():
    table = runtimes(list(snakemake.input), f"{snakemake.config['results']}/benchmarks", snakemake.params.in_process)
    with atomic_path(snakemake.output.table) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    write_html([("Runtime per rule", table, "runtime-table",
                 "An empty max_rss_mb: the rule ran inside Snakemake's own process, which has no memory of its own "
                 "to report (the caption says which rules)")], snakemake.output.html)


run_logged(snakemake.log[0], write)
