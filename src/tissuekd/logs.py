"""Logging for rule scripts: everything (progress bars, warnings, tracebacks) goes to the
rule's log file, and an InputError also reaches the console as one clear line."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable

from tissuekd.errors import InputError


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
        msg = f"tissuekd: bad input: {err}"
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


_IN_PROCESS = threading.Lock()


def run_in_process(log_path: str, step: Callable[[], object]) -> None:
    """Run `step` inside Snakemake's own process (a `run:` rule under `force-use-threads`, as
    profiles/default sets), so that many small per-slide jobs import torch and timm once per
    run instead of once each. One such step at a time: its log handler and torch's thread
    count belong to the whole process. The `tissuekd` loggers write to `log_path`; an error is
    logged there and raised, so Snakemake names the rule and wildcards."""
    with _IN_PROCESS, open(log_path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("tissuekd")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            step()
        except InputError as err:
            print(f"tissuekd: bad input: {err}", file=stream)
            raise RuntimeError(f"tissuekd: bad input: {err}") from None
        except Exception:
            traceback.print_exc(file=stream)
            raise
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
