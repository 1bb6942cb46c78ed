"""Visium samples as Space Ranger leaves them: `outs/filtered_feature_bc_matrix.h5` (10x HDF5,
read by scanpy), `outs/spatial/tissue_positions.csv` (Space Ranger >= 2.0, with a header) or
`tissue_positions_list.csv` (older, without), columns barcode, in_tissue, array_row, array_col,
pxl_row_in_fullres, pxl_col_in_fullres, and `outs/spatial/scalefactors_json.json`.

The pixel size comes from the spot grid, as HEST estimates it: neighbours in an array row
(`array_col` two apart) lie 100 µm apart centre to centre, so µm per pixel = 100 / their median
distance in full-resolution pixels. Only where no two neighbours are listed does it come from
`spot_diameter_fullres`, which spans "a theoretical 65 µm spot" in 10x's definition (not the
55 µm of the spot itself: taking 55 made pixels ~15% too small on real Space Ranger output).

squidpy.read.visium reads the same files, but squidpy 1.8 requires imagecodecs < 2026 against
this project's pinned imagecodecs 2026.3.6, and it needs the hires/lowres PNGs to place spots;
the positions are read here directly, in both Space Ranger versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from tissuekd.errors import InputError
from tissuekd.io.hest import SpotSample, on_image
from tissuekd.io.wsi import check_pixel_size

SPOT_DIAMETER_UM = 55.0  # the capture spot itself
SPOT_SPACING_UM = 100.0  # centre to centre between neighbours of an array row
SCALEFACTOR_SPOT_UM = 65.0  # what spot_diameter_fullres spans (10x's "theoretical 65 µm spot")
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def positions_file(outs: str | Path) -> Path:
    spatial = Path(outs) / "spatial"
    for name in ("tissue_positions.csv", "tissue_positions_list.csv"):
        if (spatial / name).exists():
            return spatial / name
    raise InputError(spatial, "no tissue_positions.csv or tissue_positions_list.csv")


def read_positions(path: Path) -> pd.DataFrame:
    """Both layouts: with the Space Ranger 2.0 header, or the older headerless list."""
    head = path.read_text().split("\n", 1)[0]
    table = pd.read_csv(path, header=0 if head.startswith("barcode") else None)
    if table.shape[1] != len(POSITION_COLUMNS):
        raise InputError(path, f"expected {len(POSITION_COLUMNS)} columns {POSITION_COLUMNS}, got {table.shape[1]}")
    table.columns = POSITION_COLUMNS
    return table.set_index("barcode")


def pixel_size(positions: pd.DataFrame, factors_path: Path) -> float:
    """µm per full-resolution pixel: from the median distance between row neighbours of every
    listed spot (under tissue or not), else from the scale factors' spot diameter."""
    grid = positions.set_index(["array_row", "array_col"])[["pxl_col_in_fullres", "pxl_row_in_fullres"]]
    right = grid.set_axis(pd.MultiIndex.from_arrays([grid.index.get_level_values(0),
                                                     grid.index.get_level_values(1) - 2]))
    pairs = grid.join(right, rsuffix="_next", how="inner")
    step = np.hypot(pairs["pxl_col_in_fullres_next"] - pairs["pxl_col_in_fullres"],
                    pairs["pxl_row_in_fullres_next"] - pairs["pxl_row_in_fullres"])
    step = step[step > 0]
    if len(step):
        return SPOT_SPACING_UM / float(np.median(step))
    try:
        diameter_px = float(json.loads(factors_path.read_text())["spot_diameter_fullres"])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(factors_path,
                         f"no two neighbouring spots listed and no spot_diameter_fullres ({err})") from None
    if not diameter_px > 0:
        raise InputError(factors_path, f"spot_diameter_fullres must be positive, got {diameter_px}")
    return SCALEFACTOR_SPOT_UM / diameter_px


def read_spaceranger(outs: str | Path, image: str | Path, backend: str = "auto") -> SpotSample:
    """The spots of the filtered matrix that lie under tissue, with their full-resolution centres.

    Raises
    ------
    InputError
        Naming the file: no positions file, barcodes of the matrix without a position, neither
        neighbouring spots nor a spot diameter in the scale factors, or most spot centres off the image.
    """
    import scanpy as sc

    outs = Path(outs)
    matrix = outs / "filtered_feature_bc_matrix.h5"
    try:
        adata = sc.read_10x_h5(matrix, gex_only=True)
    except (OSError, KeyError) as err:
        raise InputError(matrix, f"not a readable 10x HDF5 matrix ({err})") from None
    adata.var_names_make_unique()
    pos_path = positions_file(outs)
    positions = read_positions(pos_path)
    mpp = check_pixel_size(pixel_size(positions, outs / "spatial" / "scalefactors_json.json"), pos_path,
                           "the spot pitch gives")
    missing = ~adata.obs_names.isin(positions.index)
    if missing.any():
        raise InputError(pos_path, f"{missing.sum()} barcodes of {matrix} have no position, "
                                   f"e.g. {adata.obs_names[missing][:3].tolist()}")
    positions = positions.loc[adata.obs_names]
    keep = positions["in_tissue"].to_numpy() == 1
    adata, positions = adata[keep], positions[keep]
    if adata.n_obs == 0:
        raise InputError(pos_path, f"no spot of {matrix} is under tissue (in_tissue is 0 for every one)")
    xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    keep = on_image(xy, image, pos_path, backend)
    adata, xy = adata[keep], xy[keep]
    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    return SpotSample(np.asarray(adata.obs_names, dtype=str), xy, counts, np.asarray(adata.var_names, dtype=str),
                      mpp, SPOT_DIAMETER_UM)
