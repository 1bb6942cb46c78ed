"""Per-cell tables of the niche study, checked against the slide's cells.parquet: cell-id
alignment of feature files and logits tables, and the logits writer and reader. No torch here:
the rules in envs/scverse.yaml (external teacher, Histology Leiden) import this, not steps.py."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID, LOGIT


def check_aligned(cells: pd.DataFrame, ids: np.ndarray, source: str) -> None:
    if len(ids) != len(cells) or not np.array_equal(np.asarray(ids, dtype=str), cells[CELL_ID].to_numpy(str)):
        raise InputError(source, "cell ids do not match the slide's cells.parquet (stale or foreign file?)")


def check_feature_ids(path: str, cells: pd.DataFrame) -> None:
    with h5py.File(path) as h5:
        check_aligned(cells, h5[CELL_ID].asstr()[:], path)


def write_logits(out: str, cells: pd.DataFrame, logits: np.ndarray) -> None:
    frame = pd.DataFrame(logits, columns=[f"{LOGIT}{i}" for i in range(logits.shape[1])])
    frame.insert(0, "niche", logits.argmax(axis=1))
    frame.insert(0, CELL_ID, cells[CELL_ID].to_numpy())
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)


def read_logits(path: str, cells: pd.DataFrame, k: int | None = None) -> np.ndarray:
    try:
        if path.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
            frame = pd.read_csv(path, sep="\t" if ".tsv" in path else ",", dtype={CELL_ID: str})
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot be read as a logits table ({err})") from err
    if CELL_ID not in frame.columns:
        raise InputError(path, "needs a cell_id column")
    frame = frame.set_index(frame[CELL_ID].astype(str))
    missing = cells[CELL_ID][~cells[CELL_ID].isin(frame.index)]
    if len(missing):
        raise InputError(path, f"{len(missing)} cells have no logits (e.g. {missing.iloc[0]})")
    cols = [c for c in frame.columns if c.startswith(LOGIT)]
    if k is not None and len(cols) != k:
        raise InputError(path, f"expected {k} logit columns (logit_0..logit_{k - 1}), found {len(cols)}")
    values = np.array(frame.loc[cells[CELL_ID], cols], dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError(path, "logits contain NaN or infinite values")
    return values
