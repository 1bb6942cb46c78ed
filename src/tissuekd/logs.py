"""Logging for rule scripts: everything (progress bars, warnings, tracebacks) goes to the
rule's log file, and an InputError also reaches the console as one clear line."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable

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
