"""Snakemake's command line with the SLURM plugin polling every POLL_S seconds.

The plugin waits 10 s longer after each status check in which no job finished (up to 180 s:
kind to a busy site's accounting database). The test cluster's jobs take seconds, so that
back-off spent ~30 s per DAG level waiting on jobs long finished: most of the SLURM tests' time.
Submission, accounting and retries stay the plugin's own; only the wait between checks changes.
"""

import sys

from snakemake_executor_plugin_slurm import Executor

POLL_S = 2

# the plugin assigns this property after each check; a fixed value overrides its back-off
Executor.next_seconds_between_status_checks = property(lambda self: POLL_S, lambda self, value: None)

if __name__ == "__main__":
    from snakemake.cli import main

    sys.exit(main())
