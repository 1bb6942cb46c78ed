"""Steps run inside Snakemake's process (run: rules) log to their rule's log and raise on error."""

from __future__ import annotations

import logging

import pytest

from tissuekd.errors import InputError
from tissuekd.logs import log_progress, run_in_process


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


def test_two_in_process_steps_side_by_side_log_to_their_own_files(tmp_path):
    """Snakemake runs in-process jobs in its threads: each job's log holds its own records."""
    import threading

    started = threading.Barrier(2)

    def job(name):
        def step():
            started.wait(timeout=10)  # both running at once
            for i in range(50):
                logging.getLogger("tissuekd.demo").info("%s %d", name, i)
        run_in_process(str(tmp_path / f"{name}.log"), step)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert a.count(" a ") == 50 and " b " not in a
    assert b.count(" b ") == 50 and " a " not in b


def test_progress_is_logged_about_ten_times_whatever_the_length(caplog):
    logger = logging.getLogger("tissuekd.test")
    for total in (3, 25, 1000):
        caplog.clear()
        with caplog.at_level("INFO", logger="tissuekd.test"):
            for done in range(1, total + 1):
                log_progress(logger, "images", done, total)
        assert len(caplog.records) == min(total, 10)
        assert caplog.records[-1].getMessage() == f"images: {total} of {total} (100%)"
    caplog.clear()
    with caplog.at_level("INFO", logger="tissuekd.test"):
        for done in range(1, 21):
            log_progress(logger, "epochs", done, 20)
    assert [r.args[1] for r in caplog.records] == list(range(2, 21, 2))  # not 7 for 6, 13 for 12
    caplog.clear()
    with caplog.at_level("INFO", logger="tissuekd.test"):
        for done in [*range(64, 3044, 64), 3044]:  # batches of 64, the last one short
            log_progress(logger, "crops", done, 3044, step=64 if done % 64 == 0 else 3044 % 64)
    assert len(caplog.records) == 10 and caplog.records[-1].getMessage() == "crops: 3044 of 3044 (100%)"


def test_in_process_steps_use_one_blas_thread(tmp_path):
    """They run side by side in Snakemake's threads, each scheduled as one core."""
    from threadpoolctl import threadpool_info

    seen = []
    run_in_process(str(tmp_path / "a.log"), lambda: seen.extend(
        pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"))
    assert seen and set(seen) == {1}


@pytest.fixture
def ctrl_c():
    """stop_steps_on_ctrl_c installed for the test, pytest's SIGINT handler back after it."""
    import signal

    from tissuekd.logs import stop_steps_on_ctrl_c

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_steps_on_ctrl_c()
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_running_in_process_steps_and_leaves_no_output(tmp_path, ctrl_c):
    """A `run:` job is a thread of Snakemake's process, which Snakemake's KeyboardInterrupt
    does not reach: SIGINT stops it at its next batch, one waiting for the exclusive lock too,
    and nothing it was writing appears."""
    import signal
    import threading

    from tissuekd.io.atomic import atomic_path
    from tissuekd.logs import StepStopped

    started, batches, ended = threading.Event(), [], {}

    def step(out):
        with atomic_path(out) as tmp:
            tmp.write_text("first rows")
            for i in range(6000):  # 60 s unless stopped
                started.set()
                batches.append(i)
                threading.Event().wait(0.01)  # a batch's work
        raise AssertionError("ran to its end")

    def job(name):
        try:
            run_in_process(str(tmp_path / f"{name}.log"), lambda: step(tmp_path / f"{name}.h5"), exclusive=True)
        except BaseException as err:  # noqa: BLE001 - what stopped it is the result
            ended[name] = type(err)

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    assert started.wait(30)
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # Snakemake's main thread gets its KeyboardInterrupt as before
    for t in threads:
        t.join(30)
    assert ended == {"a": StepStopped, "b": StepStopped}, ended
    assert len(batches) < 1000
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*partial*")) == []
    assert "stopped by Ctrl-C" in (tmp_path / "a.log").read_text()
    run_in_process(str(tmp_path / "c.log"), lambda: None)  # later steps run, nothing left pending


def test_an_ignored_ctrl_c_stays_ignored_and_the_handler_is_installed_once():
    import signal

    from tissuekd.logs import stop_steps_on_ctrl_c

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop_steps_on_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop_steps_on_ctrl_c()
        installed = signal.getsignal(signal.SIGINT)
        stop_steps_on_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is installed and installed is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
