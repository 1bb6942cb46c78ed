"""Delimited text tables: the separator, read from the header line (a sniffer guessing from one
line picked a letter on one-column files)."""

from __future__ import annotations

from pathlib import Path


def header_separator(source: str | Path | bytes, candidates: tuple[str, ...] = ("\t", ",", ";"),
                     fallback: str = ",") -> str:
    """The first of `candidates` in the table's first line, else `fallback`. `source`: a path
    (compression as pandas infers it) or the table's bytes (read from an archive)."""
    from pandas.io.common import get_handle

    if isinstance(source, bytes):
        first = source.split(b"\n", 1)[0].decode("utf-8")
    else:
        with get_handle(source, "r", compression="infer") as handles:
            first = handles.handle.readline()
    return next((sep for sep in candidates if sep in first), fallback)
