"""Steps run inside Snakemake's process (run: rules) log to their rule's log and raise on error."""

from __future__ import annotations

import logging

import pytest

from tissuekd.errors import InputError
from tissuekd.logs import run_in_process


def test_in_process_step_logs_to_its_file_and_detaches(tmp_path):
    log = tmp_path / "job.log"
    run_in_process(str(log), lambda: logging.getLogger("tissuekd.survival").info("encoded %d patches", 35))
    assert "encoded 35 patches" in log.read_text()
    logging.getLogger("tissuekd.survival").info("after the job")
    assert "after the job" not in log.read_text()  # the handler is gone with the job


def test_in_process_errors_are_logged_and_raised(tmp_path):
    log = tmp_path / "job.log"

    def bad_input():
        raise InputError("slides/x.svs", "no tissue")

    with pytest.raises(RuntimeError, match="bad input: slides/x.svs: no tissue"):
        run_in_process(str(log), bad_input)
    assert "tissuekd: bad input: slides/x.svs: no tissue" in log.read_text()
    with pytest.raises(ZeroDivisionError):
        run_in_process(str(log), lambda: 1 / 0)
    assert "ZeroDivisionError" in log.read_text()
