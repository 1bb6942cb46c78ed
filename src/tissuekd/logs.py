"""Logging for rule scripts: everything (progress bars, warnings, tracebacks) goes to the
rule's log file, and an InputError also reaches the console as one clear line opening with
its kind (`bad input:`; `download failed:`, `not enough disk space:` for tissuekd.errors' others)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from tissuekd.errors import InputError

# faiss's loader logs each CPU build it did not find (with the error) at INFO before loading the
# one it has: lines that read like failures in every log of a step that imports it
logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_logged(log_path: str | None, step: Callable[[], object]) -> None:
    """Run `step` with stderr and logging sent to `log_path`; exit 1 on failure."""
    console = sys.stderr
    stream = open(log_path, "a", buffering=1) if log_path else console
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    try:
        step()
    except InputError as err:
        msg = f"tissuekd: {err.kind}: {err}"
        print(msg, file=stream)
        if stream is not console:
            print(msg, file=console)
        sys.exit(1)
    except Exception:
        traceback.print_exc(file=stream)
        if stream is not console:
            print(f"tissuekd: step failed; see {log_path}", file=console)
        sys.exit(1)
    finally:
        sys.stderr = console
        if stream is not console:
            stream.close()


_STEPS: set[int] = set()  # the threads running an in-process step now
_STEPS_LOCK = threading.Lock()
_EXCLUSIVE = threading.Lock()  # in-process steps that set process-wide state (torch threads, encoder cache)
_LEVEL = threading.Lock()
_running, _saved_level = 0, logging.NOTSET  # in-process steps now running; the level before the first


class _ThisThread(logging.Filter):
    """Passes the records logged by the thread that made it: two in-process jobs run in two
    of Snakemake's threads, and each log file gets its own job's records only."""

    def __init__(self):
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.ident


@contextlib.contextmanager
def _info_level(logger: logging.Logger):
    """`logger` at INFO while any in-process step runs; its former level once the last ends."""
    global _running, _saved_level
    with _LEVEL:
        if _running == 0:
            _saved_level = logger.level
        _running += 1
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        with _LEVEL:
            _running -= 1
            if _running == 0:
                logger.setLevel(_saved_level)


def run_in_process(log_path: str, step: Callable[[], object], *, exclusive: bool = False) -> None:
    """Run `step` inside Snakemake's own process (a `run:` rule under `force-use-threads`, as
    profiles/default sets), so that many small per-slide jobs skip starting Python and
    importing their libraries (torch and timm: ~10 s) once each. Jobs run side by side in
    Snakemake's threads; the `tissuekd` loggers of this thread write to `log_path`.
    `exclusive` steps (torch: its thread count and the encoder cache are the whole
    process's) run one at a time. An error is logged there and raised, so Snakemake names
    the rule and wildcards; Ctrl-C stops the step (`stop_steps_on_ctrl_c`)."""
    logger = logging.getLogger("tissuekd")
    _one_blas_thread()
    lock = _EXCLUSIVE if exclusive else contextlib.nullcontext()
    with _stoppable(), lock, open(log_path, "a", buffering=1) as stream, _info_level(logger):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_ThisThread())
        logger.addHandler(handler)
        try:
            step()
        except InputError as err:
            print(f"tissuekd: {err.kind}: {err}", file=stream)
            raise RuntimeError(f"tissuekd: {err.kind}: {err}") from None
        except StepStopped:
            print("tissuekd: stopped by Ctrl-C; no output of this job was written", file=stream)
            raise
        except Exception:
            traceback.print_exc(file=stream)
            raise
        finally:
            logger.removeHandler(handler)


class StepStopped(KeyboardInterrupt):
    """Raised inside a running in-process step when the run is stopped with Ctrl-C."""


def stop_steps_on_ctrl_c() -> None:
    """Make Ctrl-C stop the in-process steps too. Snakemake turns SIGINT into KeyboardInterrupt
    in its main thread and then waits for the running jobs; a `run:` job is one of its threads,
    which nothing interrupted, so a features job on a real slide ran on to its end (minutes to
    hours) before the run stopped. Here SIGINT first raises StepStopped in each running step's
    thread (CPython's PyThreadState_SetAsyncExc: at the thread's next Python instruction, i.e.
    once the current batch's C call returns), then does what it did before. The step's outputs,
    written through `io.atomic.atomic_path`, are never moved into place. Called from the
    Snakefile, in the main thread; a SIGINT that is ignored (nohup, a background job) stays so."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or getattr(previous, "stops_steps", False):
        return

    def on_ctrl_c(signum, frame):
        with _STEPS_LOCK:
            for ident in _STEPS:
                _raise_in_thread(ident, StepStopped)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL, or a handler set outside Python
            raise KeyboardInterrupt

    on_ctrl_c.stops_steps = True
    signal.signal(signal.SIGINT, on_ctrl_c)


def _raise_in_thread(ident: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in thread `ident` at its next Python instruction; None clears one pending."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


@contextlib.contextmanager
def _stoppable():
    """Register this thread as running a step while the block runs (a step waiting for the
    exclusive lock too: it stops on getting it)."""
    ident = threading.get_ident()
    with _STEPS_LOCK:
        _STEPS.add(ident)
    try:
        yield
    finally:
        with _STEPS_LOCK:
            _STEPS.discard(ident)
            _raise_in_thread(ident, None)  # one raised as the step ended must not reach Snakemake's code


@functools.cache
def _one_blas_thread() -> None:
    """numpy's and scipy's BLAS in Snakemake's process runs on one thread from the first
    in-process step on: those steps run side by side, each scheduled as one core (a ridge fold
    on OpenBLAS's two threads beside another job ran ~10x slower on two cores). Torch's own
    thread pool is apart (its steps set it and run exclusively)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def log_progress(logger: logging.Logger, what: str, done: int, total: int, share: float = 0.1, step: int = 1
                 ) -> None:
    """Log "`what`: done of total" each time `done` (1-based; `step` more than at the last call)
    passes another `share` of `total`: about ten lines for a long loop, whatever its length."""

    def passed(n):  # shares of total passed; the epsilon keeps 6 / 20 / 0.1 = 2.9999999999999996 at 3
        return int(n / total / share + 1e-9)

    if total > 0 and (done == total or passed(done) > passed(done - step)):
        logger.info("%s: %d of %d (%.0f%%)", what, done, total, 100 * done / total)
