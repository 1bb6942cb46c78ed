"""Atomic outputs: a failed or killed job must never leave a file that looks finished."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (file or folder); rename it onto `path` only if the block succeeds.

    The rename is atomic on POSIX file systems, so readers (and Snakemake) see either
    nothing or the complete file. The temporary name keeps the suffix so that writers
    which dispatch on it (pandas, anndata, h5py) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.partial-*{path.suffix}"):  # left by a killed job
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():  # a model directory (e.g. scvi-tools' save())
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
