"""Xenium output bundles (Xenium Onboard Analysis 1.x-3.x) as published.

A bundle is the `outs/` folder: `experiment.xenium` (JSON, with `pixel_size`),
`cells.parquet` or, in some early bundles, only `cells.csv.gz` (centroids in microns),
`cell_feature_matrix.h5` (10x HDF5, cells as barcodes; else the same matrix as 10x's MEX folder
`cell_feature_matrix/`, as it is downloaded on its own) and optionally `analysis/clustering/...`,
or `analysis.tar.gz` as the public `*_outs.zip` downloads ship it. Cell ids were
integers in early releases and strings later, and may be stored as bytes; they are
returned as `str` everywhere.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.counts import empty_rows
from tissuekd.io.delimited import header_separator

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the workflow's parse imports this module for its layout; anndata takes 1.4 s
    import anndata as ad

PIXEL_SIZE_UM = (0.05, 5.0)  # what a morphology image can have (Xenium writes 0.2125)
LFS_POINTER = b"version https://git-lfs"  # what a repository holds in place of a large file not fetched
MATRIX = "cell_feature_matrix.h5"
MEX = ("cell_feature_matrix", ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"))  # folder, its files
MATRIX_MEMBERS = ["barcodes", "data", "indices", "indptr", "shape", "features/id", "features/name",
                  "features/feature_type"]
CLUSTERS = "analysis/clustering/gene_expression_graphclust/clusters.csv"
ANALYSIS_TAR = "analysis.tar.gz"  # the public downloads pack analysis/ into it
ID_NAMES = {"cell_id", "cellid", "cell", "barcode", "barcodes", "cell_ids"}  # an id column's names in exports
XENIUM_ID = re.compile(r"[a-p]{8}-\d+|\d+")  # a cell id as XOA writes it (or an early integer one)


def _as_str_ids(values) -> pd.Index:
    ids = [v.decode() if isinstance(v, bytes | bytearray) else str(v) for v in values]
    return pd.Index(ids, name="cell_id")


def read_experiment(bundle: str | Path) -> dict:
    path = Path(bundle) / "experiment.xenium"
    if not path.exists():
        raise InputError(path, "missing experiment.xenium (is this a Xenium output folder?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise InputError(path, f"must be a JSON object, found a {type(meta).__name__}")
    size = meta.get("pixel_size")
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) \
            or not PIXEL_SIZE_UM[0] <= size <= PIXEL_SIZE_UM[1]:
        raise InputError(path, f"`pixel_size` must be µm per morphology-image pixel (Xenium: 0.2125), found "
                               f"{size!r}")
    return meta


def cells_path(bundle: str | Path) -> Path:
    """The cell table a bundle has: `cells.parquet`, else `cells.csv.gz` (some early bundles)."""
    bundle = Path(bundle)
    for name in ("cells.parquet", "cells.csv.gz"):
        if (bundle / name).exists():
            return bundle / name
    raise InputError(bundle / "cells.parquet", "missing cell table (neither cells.parquet nor cells.csv.gz)")


def read_cells(bundle: str | Path) -> pd.DataFrame:
    """Cell centroids in microns, indexed by string cell_id."""
    path = cells_path(bundle)
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        lfs = " (a Git LFS pointer: fetch the file itself)" if _first_line(path).startswith(LFS_POINTER) else ""
        raise InputError(path, f"not a readable cell table{lfs} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
    missing = {"cell_id", "x_centroid", "y_centroid"} - set(table.columns)
    if missing:
        raise InputError(path, f"missing column(s) {sorted(missing)}")
    blank = table["cell_id"].isna().to_numpy()
    if blank.any():
        raise InputError(path, f"{blank.sum()} cell(s) without a cell_id, e.g. data row {int(np.argmax(blank)) + 1} "
                               "(counting from 1 below the header)")
    cells = pd.DataFrame(
        {"x_um": table["x_centroid"].to_numpy(float), "y_um": table["y_centroid"].to_numpy(float)},
        index=_as_str_ids(table["cell_id"]),
    )
    if cells.index.has_duplicates:
        repeated = cells.index[cells.index.duplicated()].unique()
        raise InputError(path, f"{len(repeated)} cell_id value(s) repeated, e.g. {list(repeated[:3])}")
    bad = ~np.isfinite(cells.to_numpy()).all(axis=1)
    if bad.any():
        raise InputError(path, f"{bad.sum()} cell(s) with NaN or infinite centroid coordinates, e.g. "
                               f"{list(cells.index[bad][:3])}")
    if cells.empty:
        raise InputError(path, "no cells")
    log.info("%s: %d cells", path, len(cells))
    return cells


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline(64)


def matrix_files(bundle: str | Path) -> list[Path]:
    """The bundle's cell-feature matrix: `cell_feature_matrix.h5`, else the three files of the
    MEX folder `cell_feature_matrix/` (matrix first)."""
    bundle = Path(bundle)
    if (bundle / MATRIX).exists() or not (bundle / MEX[0]).is_dir():
        return [bundle / MATRIX]
    return [bundle / MEX[0] / name for name in MEX[1]]


def read_counts(bundle: str | Path) -> ad.AnnData:
    """Gene counts per cell (CSR) from the 10x HDF5 matrix, else its MEX folder; control features
    are dropped (both of scanpy's readers keep feature_type == "Gene Expression")."""
    files = matrix_files(bundle)
    for file in files:
        if not file.exists():
            raise InputError(file, f"missing (a bundle holds {MATRIX}, or the MEX folder {MEX[0]}/ with "
                                   f"{', '.join(MEX[1])})")
    path = files[0]
    adata = _read_10x_h5(path) if len(files) == 1 else _read_mex(path)
    adata.obs_names = _as_str_ids(adata.obs_names)
    if adata.obs_names.has_duplicates:
        repeated = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise InputError(path, f"{len(repeated)} barcode(s) listed twice, e.g. {list(repeated[:3])}")
    adata.var_names_make_unique()
    data = adata.X.data if hasattr(adata.X, "data") else np.asarray(adata.X)
    if np.isnan(data).any():
        raise InputError(path, "counts contain NaN")
    if (data < 0).any():
        raise InputError(path, "counts contain negative values")
    if adata.n_vars == 0:
        raise InputError(path, "no 'Gene Expression' features in the matrix")
    log.info("%s: %d cells x %d genes (control features dropped)", path, adata.n_obs, adata.n_vars)
    return adata


def _read_10x_h5(path: Path) -> ad.AnnData:
    import scanpy as sc  # heavy import, only where counts are read

    _check_10x_layout(path)
    try:
        return sc.read_10x_h5(path, gex_only=True)
    except UnicodeDecodeError as err:
        raise InputError(path, f"barcodes or feature names are not ASCII, as 10x writes them ({err})") from None
    except Exception as err:  # h5py/scanpy raise many types for a malformed file
        raise InputError(path, f"not a readable 10x HDF5 matrix: {err}") from None


def _read_mex(matrix: Path) -> ad.AnnData:
    """A MEX folder (`matrix`: its matrix.mtx.gz, genes x cells), as CSR cells x genes."""
    import scanpy as sc

    try:
        adata = sc.read_10x_mtx(matrix.parent, gex_only=True)
    except Exception as err:  # scipy, pandas and gzip raise many types for a malformed folder
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(matrix, f"not a readable 10x MEX matrix (with features.tsv.gz, barcodes.tsv.gz): "
                                 f"{first}") from None
    adata.X = adata.X.tocsr()  # the transposed coordinates arrive as CSC
    return adata


def _check_10x_layout(path: Path) -> None:
    """The members a 10x HDF5 matrix (Cell Ranger 3+, Xenium) has, named when absent."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            group, top = h5.get("matrix"), sorted(h5.keys())
            missing = [m for m in MATRIX_MEMBERS if not isinstance(group, h5py.Group) or m not in group]
    except OSError as err:
        raise InputError(path, f"not a readable HDF5 file: {err}") from None
    if missing:
        raise InputError(path, f"not a 10x HDF5 matrix: matrix/ lacks {missing} (the file holds {top})")


def clusters_path(bundle: str | Path) -> Path | None:
    """Where a bundle's graph-based clusters are: the unpacked `analysis/` folder, else the
    `analysis.tar.gz` of a public download; None where neither is."""
    for path in (Path(bundle) / CLUSTERS, Path(bundle) / ANALYSIS_TAR):
        if path.exists():
            return path
    return None


def read_clusters(bundle: str | Path) -> pd.Series | None:
    """Xenium's own graph-based clusters (`Barcode,Cluster`), or None where absent."""
    path = clusters_path(bundle)
    if path is None:
        return None
    if path.name != ANALYSIS_TAR:
        return read_labels(path, value_column="Cluster", id_column="Barcode")
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = next((m for m in tar if m.isfile() and m.name.endswith(CLUSTERS)), None)
            if member is None:
                raise InputError(path, f"holds no {CLUSTERS}")
            text = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(path, f"not a readable tar.gz archive ({err})") from None
    return read_labels(path, value_column="Cluster", id_column="Barcode", text=text)


def read_labels(path: str | Path, value_column: str | None = None, id_column: str | None = None,
                text: bytes | None = None) -> pd.Series:
    """A per-cell label table (CSV/TSV/parquet) with a header row: an id column and a label column.

    Without names, the id column is the first one named like an id (cell_id, barcode, cell), else
    the first column, and the labels are the next column that is neither it nor an unnamed row
    index (pandas' `to_csv` writes one first). Ids and labels are stripped of spaces (`a, b`
    separators). `text`: the table's bytes, read from an archive at `path`.
    """
    path = Path(path)
    if text is None and not path.exists():
        raise InputError(path, "label file does not exist")
    table = _label_table(path, text)
    if table.shape[1] < 2:
        raise InputError(path, "expected at least two columns: cell id and label")
    if table.empty:
        raise InputError(path, "has a header but no rows")
    if id_column is None and XENIUM_ID.fullmatch(str(table.columns[0]).strip()):
        raise InputError(path, f"the first row ({', '.join(map(str, table.columns[:2]))}) looks like a cell, not a "
                               "header: the table needs a header row (cell id, label)")
    id_column = id_column or next((c for c in table.columns if str(c).strip().lower() in ID_NAMES), table.columns[0])
    if value_column is None:
        index = table.columns[0] if str(table.columns[0]).startswith("Unnamed: ") else None  # pandas' row numbers
        rest = [c for c in table.columns if c not in (id_column, index)]
        if not rest:
            raise InputError(path, f"no label column beside the ids ({id_column!r}; has {list(table.columns)})")
        value_column = rest[0]
        if len(rest) > 1:
            log.warning("%s: the labels are its column %r; %s ignored", path, value_column, rest[1:])
    for col in (id_column, value_column):
        if col not in table.columns:
            raise InputError(path, f"missing column {col!r} (has {list(table.columns)})")
    given = table[value_column].notna() & (table[value_column].astype(str).str.strip() != "")
    table = table[given]  # a blank label is no label: such cells stay unknown, not a class "nan"
    labels = pd.Series(table[value_column].astype(str).str.strip().to_numpy(),
                       index=_as_str_ids(table[id_column]).str.strip())
    if labels.index.has_duplicates:
        repeated = labels.index[labels.index.duplicated()].unique()
        raise InputError(path, f"duplicate cell ids: {len(repeated)} repeated, e.g. {list(repeated[:3])}")
    return labels


def _label_table(path: Path, text: bytes | None) -> pd.DataFrame:
    """A label table as written: ids and labels as strings (numbers in a column with blanks would
    otherwise read as floats, "1.0"), from parquet, Excel or delimited text."""
    if path.suffix.lower() in (".geojson", ".json"):
        raise InputError(path, "polygon annotations (GeoJSON, e.g. QuPath's) are not read: give a table with one row "
                               "per cell (cell id, label), e.g. each cell labelled with the region its centroid is in")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path).convert_dtypes()
        if path.suffix.lower() in (".xlsx", ".xls"):
            return pd.read_excel(path, dtype=str)  # the first sheet
        source = io.BytesIO(text) if text is not None else path
        sep = header_separator(text if text is not None else path, ("\t", ",", ";", "|"))
        return pd.read_csv(source, sep=sep, encoding="utf-8-sig", dtype=str)
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text table (CSV/TSV); Excel workbooks need the .xlsx ending") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError, zipfile.BadZipFile) as err:
        # truncated or malformed files (an open quote, a cut parquet footer, a workbook that is no zip)
        raise InputError(path, f"not a readable {path.suffix.lstrip('.') or 'text'} table: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def load_bundle(bundle: str | Path) -> tuple[pd.DataFrame, ad.AnnData, dict]:
    """Cells, counts (rows aligned to the cells) and experiment metadata of one bundle."""
    meta = read_experiment(bundle)
    cells = read_cells(bundle)
    counts = read_counts(bundle)
    only_cells = cells.index.difference(counts.obs_names)
    only_matrix = counts.obs_names.difference(cells.index)
    if len(only_cells) or len(only_matrix):
        raise InputError(
            matrix_files(bundle)[0],
            f"barcodes do not match the cell table: {len(only_cells)} cells have no matrix column "
            f"(e.g. {list(only_cells[:3])}), {len(only_matrix)} matrix barcodes are not cells "
            f"(e.g. {list(only_matrix[:3])})",
        )
    counts = counts[cells.index].copy()
    check_empty_cells(counts, matrix_files(bundle)[0])
    return cells, counts, meta


def check_empty_cells(counts: ad.AnnData, path: Path) -> None:
    """Cells without a single count are kept (the H&E still sees them) and counted; most cells
    empty is an error (io.counts): an empty or wrong matrix would give one niche for every cell."""
    empty_rows(counts.X, path, "cells", "kept")
