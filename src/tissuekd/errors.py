"""Errors that name the offending input, so a user can fix the file rather than the code."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: carries the file (or sheet row / config key) and what is wrong with it."""

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
