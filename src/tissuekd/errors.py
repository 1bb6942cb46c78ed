"""Errors that name the offending input, so a user can fix the file rather than the code."""

from __future__ import annotations

import re
from pathlib import Path


class InputError(ValueError):
    """Bad input: carries the file (or sheet row / config key) and what is wrong with it."""

    kind = "bad input"  # how the console line opens (tissuekd.logs)

    def __init__(self, where: str | Path, problem: str | None = None):
        if problem is None:  # rebuilt from a message: unpickled, or re-raised by torch's DataLoader from a worker
            where, problem = _split(str(where))
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class DownloadError(InputError):
    """A fetch that failed: the URL, the network or the bytes that came back, not a file of the
    user's; `where` is the URL."""

    kind = "download failed"


class DiskSpaceError(InputError):
    """Too little free space for what a step is about to write; `where` is the folder."""

    kind = "not enough disk space"


def _split(message: str) -> tuple[str, str]:
    """(where, problem) of `where: problem`, or of a traceback's last `InputError: where: problem`
    (or one of its subclasses') line."""
    names = "|".join(cls.__name__ for cls in (InputError, *InputError.__subclasses__()))
    lines = re.findall(rf"(?:{names}): (.+)", message)
    where, _, problem = (lines[-1] if lines else message).partition(": ")
    return where, problem
