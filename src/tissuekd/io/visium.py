"""Visium samples as Space Ranger leaves them, read by `squidpy.read.visium`:
`outs/filtered_feature_bc_matrix.h5` (10x HDF5, through scanpy), `outs/spatial/tissue_positions.csv`
(Space Ranger >= 2.0, with a header) or `tissue_positions_list.csv` (older, without), columns
barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres,
`outs/spatial/scalefactors_json.json` and the hires/lowres PNGs (squidpy reads the positions only
with the images; Space Ranger always writes them). What squidpy leaves to its caller is checked
here first, so that a bad folder is named in one line: the files, the positions' columns, and
barcodes of the matrix without a position.

The pixel size comes from the spot grid, as HEST estimates it: neighbours in an array row
(`array_col` two apart) lie 100 µm apart centre to centre, so µm per pixel = 100 / their median
distance in full-resolution pixels. Only where no two neighbours are listed does it come from
`spot_diameter_fullres`, which spans "a theoretical 65 µm spot" in 10x's definition (not the
55 µm of the spot itself: taking 55 made pixels ~15% too small on real Space Ranger output).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.wsi import check_pixel_size

# anndata (also through io.hest) is imported by the readers only: the workflow plans with
# outs_files, and planning should not pay 0.75 s for it
if TYPE_CHECKING:
    import anndata as ad

    from tissuekd.io.hest import SpotSample

SPOT_DIAMETER_UM = 55.0  # the capture spot itself
SPOT_SPACING_UM = 100.0  # centre to centre between neighbours of an array row
SCALEFACTOR_SPOT_UM = 65.0  # what spot_diameter_fullres spans (10x's "theoretical 65 µm spot")
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def outs_files(outs: str | Path) -> dict[str, Path]:
    """The files of an outs/ folder that squidpy.read.visium opens: the matrix, the positions
    (2.0's name, or the older one where only that exists), the scale factors and the two PNGs
    (squidpy reads positions only with them). The workflow plans with these as inputs."""
    spatial = Path(outs) / "spatial"
    positions = spatial / "tissue_positions.csv"
    if not positions.exists() and (spatial / "tissue_positions_list.csv").exists():
        positions = spatial / "tissue_positions_list.csv"
    return {"matrix": Path(outs) / "filtered_feature_bc_matrix.h5", "positions": positions,
            "scalefactors": spatial / "scalefactors_json.json",
            **{res: spatial / f"tissue_{res}_image.png" for res in ("hires", "lowres")}}


def check_outs(outs: Path) -> dict[str, Path]:
    """Every file of `outs_files` present, and the positions' column count (squidpy would stop
    on a bare length mismatch): the files, or an InputError naming what is wrong."""
    files = outs_files(outs)
    if not files["positions"].exists():
        raise InputError(outs / "spatial", "no tissue_positions.csv or tissue_positions_list.csv")
    for name, path in files.items():
        if not path.exists():
            png = name in ("hires", "lowres")
            why = " (Space Ranger writes it; squidpy.read.visium reads positions only with it)" if png else ""
            raise InputError(path.parent, f"no {path.name}{why}")
    with open(files["positions"]) as f:
        columns = len(f.readline().split(","))
    if columns != len(POSITION_COLUMNS):
        raise InputError(files["positions"], f"expected {len(POSITION_COLUMNS)} columns {POSITION_COLUMNS}, "
                                             f"got {columns}")
    return files


def read_outs(outs: Path, library_id: str) -> tuple[ad.AnnData, dict[str, Path]]:
    """squidpy.read.visium on a checked outs/ folder: the filtered matrix (gene expression only),
    each spot's `in_tissue`, `array_row`, `array_col` in obs and its full-resolution centre
    (x, y) in obsm["spatial"]; and the files read (`outs_files`)."""
    files = check_outs(outs)
    with warnings.catch_warnings():  # docrep's docstring warnings at import, not ours to act on
        warnings.simplefilter("ignore", SyntaxWarning)
        import squidpy as sq
    try:
        adata = sq.read.visium(outs, counts_file=files["matrix"].name, library_id=library_id, gex_only=True)
    except (OSError, KeyError) as err:
        raise InputError(files["matrix"], f"not a readable 10x HDF5 matrix ({err})") from None
    adata.var_names_make_unique()
    return adata, files


def pixel_size(positions: pd.DataFrame, factors_path: Path) -> float:
    """µm per full-resolution pixel: from the median distance between row neighbours of the
    matrix's spots, else from the scale factors' spot diameter."""
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
    from scipy import sparse

    from tissuekd.io.hest import SpotSample, on_image

    outs = Path(outs)
    adata, files = read_outs(outs, library_id=outs.parent.name)
    matrix, pos_path = files["matrix"], files["positions"]
    missing = adata.obs["in_tissue"].isna().to_numpy()
    if missing.any():
        raise InputError(pos_path, f"{missing.sum()} barcodes of {matrix} have no position, "
                                   f"e.g. {adata.obs_names[missing][:3].tolist()}")
    spots = adata.obs[["array_row", "array_col"]].assign(
        pxl_col_in_fullres=adata.obsm["spatial"][:, 0], pxl_row_in_fullres=adata.obsm["spatial"][:, 1])
    mpp = check_pixel_size(pixel_size(spots, files["scalefactors"]), pos_path,
                           "the spot pitch gives")
    adata = adata[adata.obs["in_tissue"].to_numpy() == 1]
    if adata.n_obs == 0:
        raise InputError(pos_path, f"no spot of {matrix} is under tissue (in_tissue is 0 for every one)")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    keep = on_image(xy, image, pos_path, backend)
    adata, xy = adata[keep], xy[keep]
    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    return SpotSample(np.asarray(adata.obs_names, dtype=str), xy, counts, np.asarray(adata.var_names, dtype=str),
                      mpp, SPOT_DIAMETER_UM)
