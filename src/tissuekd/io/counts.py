"""Rows of a count matrix (cells, spots) without a single count: a few are normal, most mean the
matrix is not the one of these rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tissuekd.errors import InputError

log = logging.getLogger(__name__)
MAX_EMPTY = 0.5  # above this share of empty rows the matrix is taken for a wrong one: an error
WARN_EMPTY = 0.05  # above this share the count is logged as a warning


def empty_rows(counts, path: str | Path, rows: str, fate: str) -> np.ndarray:
    """Boolean mask of the rows of `counts` (sparse or dense) without a count, logged with
    their number (where any) and `fate` (what the caller does with them); more than MAX_EMPTY of
    them is an error naming `path`. `rows` names them in messages ("cells", "spots under tissue")."""
    empty = np.asarray(counts.sum(axis=1)).ravel() == 0
    n, total = int(empty.sum()), len(empty)
    if n > MAX_EMPTY * total:
        raise InputError(path, f"{n} of {total} {rows} have no count: is this the matrix of these {rows}, "
                               "with its counts?")
    if n:
        say = log.warning if n > WARN_EMPTY * total else log.info
        say("%s: %d of %d %s have no count: %s", path, n, total, rows, fate)
    return empty
