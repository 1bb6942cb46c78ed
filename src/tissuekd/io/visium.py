"""Visium samples as Space Ranger leaves them, read by `squidpy.read.visium`:
`outs/filtered_feature_bc_matrix.h5` (10x HDF5, through scanpy), `outs/spatial/tissue_positions.csv`
(Space Ranger >= 2.0, with a header) or `tissue_positions_list.csv` (older, without), columns
barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres,
`outs/spatial/scalefactors_json.json` and the hires/lowres PNGs (squidpy reads the positions only
with the images; Space Ranger always writes them). What squidpy leaves to its caller is checked
here first, so that a bad folder is named in one line: the files (each readable), the positions'
columns (squidpy names them by position, whatever a header says) and barcodes (listed once; every
one of the matrix listed).

The pixel size comes from the spot grid, as HEST estimates it: neighbours in an array row
(`array_col` two apart) lie 100 µm apart centre to centre, so µm per pixel = 100 / their median
distance in full-resolution pixels. Only where no two neighbours are listed does it come from
`spot_diameter_fullres`, which spans "a theoretical 65 µm spot" in 10x's definition (not the
55 µm of the spot itself: taking 55 made pixels ~15% too small on real Space Ranger output).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from tissuekd.errors import InputError
from tissuekd.io.wsi import check_pixel_size, open_slide

log = logging.getLogger(__name__)

# anndata (also through io.hest) is imported by the readers only: the workflow plans with
# outs_files, and planning should not pay 0.75 s for it
if TYPE_CHECKING:
    import anndata as ad

    from tissuekd.io.hest import SpotSample

SPOT_DIAMETER_UM = 55.0  # the capture spot itself
SPOT_SPACING_UM = 100.0  # centre to centre between neighbours of an array row
SCALEFACTOR_SPOT_UM = 65.0  # what spot_diameter_fullres spans (10x's "theoretical 65 µm spot")
MPP_RATIO = 1.25  # image-stated vs spot-pitch pixel size beyond which the reader warns
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
    check_positions(files["positions"])
    try:
        json.loads(files["scalefactors"].read_text())
    except (OSError, ValueError) as err:
        raise InputError(files["scalefactors"], f"not a readable JSON file ({err})") from None
    for res in ("hires", "lowres"):
        try:
            with Image.open(files[res]) as png:
                png.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a broken image
            raise InputError(files[res], f"not a readable image ({type(err).__name__}: {err})") from None
    return files


def check_positions(path: Path) -> None:
    """What squidpy takes on trust: six columns, in 10x's order where a header names them
    (squidpy names them by position), and each barcode once (squidpy's merge would repeat a spot)."""
    with open(path) as f:
        first = [cell.strip() for cell in f.readline().split(",")]
    if len(first) != len(POSITION_COLUMNS):
        raise InputError(path, f"expected {len(POSITION_COLUMNS)} columns {POSITION_COLUMNS}, got {len(first)}")
    header = first[0].lower() == "barcode"  # squidpy's test for a header
    if header and first != POSITION_COLUMNS:
        raise InputError(path, f"columns {first}: squidpy reads them by position, as {POSITION_COLUMNS}")
    barcodes = pd.read_csv(path, header=0 if header else None, usecols=[0], dtype=str).iloc[:, 0]
    if barcodes.duplicated().any():
        raise InputError(path, f"barcodes listed twice, e.g. {barcodes[barcodes.duplicated()][:3].tolist()}")


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
    except Exception as err:  # noqa: BLE001 - the other files are checked: scanpy's reader raises many kinds
        raise InputError(files["matrix"], f"not a readable 10x HDF5 matrix ({type(err).__name__}: {err})") from None
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


def compare_image_mpp(mpp: float, image: str | Path, positions: Path, backend: str) -> None:
    """A warning where the image states a pixel size MPP_RATIO or more away from the spot pitch's:
    the positions are then likely of another image or resolution (Space Ranger's full-resolution
    pixels are the image's). Not an error: a scanner may state a wrong size, and the pitch decides."""
    with open_slide(image, backend) as slide:
        stated = slide.mpp
    if stated and max(mpp / stated, stated / mpp) > MPP_RATIO:
        log.warning("%s: the spot pitch gives %.4f µm per pixel, but %s states %.4f (%.2fx): are the positions "
                    "in this image's full-resolution pixels? The pitch's is used", positions, mpp, image, stated,
                    mpp / stated)


def read_spaceranger(outs: str | Path, image: str | Path, backend: str = "auto") -> SpotSample:
    """The spots of the filtered matrix that lie under tissue, with their full-resolution centres.

    Raises
    ------
    InputError
        Naming the file: a missing or unreadable file, positions with a barcode twice or columns
        out of 10x's order, barcodes of the matrix without a position, a non-finite centre, negative
        counts, neither neighbouring spots nor a spot diameter in the scale factors, or most spot
        centres off the image. A pixel size the image states far from the spot pitch's is a warning."""
    from scipy import sparse

    from tissuekd.io.hest import SpotSample, check_centres, check_counts, on_image

    outs = Path(outs)
    adata, files = read_outs(outs, library_id=outs.parent.name)
    matrix, pos_path = files["matrix"], files["positions"]
    missing = adata.obs["in_tissue"].isna().to_numpy()
    if missing.any():
        raise InputError(pos_path, f"{missing.sum()} barcodes of {matrix} have no position, "
                                   f"e.g. {adata.obs_names[missing][:3].tolist()}")
    check_centres(np.asarray(adata.obsm["spatial"], dtype=np.float64), adata.obs_names, pos_path, "pixel")
    spots = adata.obs[["array_row", "array_col"]].assign(
        pxl_col_in_fullres=adata.obsm["spatial"][:, 0], pxl_row_in_fullres=adata.obsm["spatial"][:, 1])
    mpp = check_pixel_size(pixel_size(spots, files["scalefactors"]), pos_path,
                           "the spot pitch gives")
    compare_image_mpp(mpp, image, pos_path, backend)
    adata = adata[adata.obs["in_tissue"].to_numpy() == 1]
    if adata.n_obs == 0:
        raise InputError(pos_path, f"no spot of {matrix} is under tissue (in_tissue is 0 for every one)")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    keep = on_image(xy, image, pos_path, backend)
    adata, xy = adata[keep], xy[keep]
    counts = check_counts(sparse.csr_matrix(adata.X, dtype=np.float32), matrix)
    return SpotSample(np.asarray(adata.obs_names, dtype=str), xy, counts, np.asarray(adata.var_names, dtype=str),
                      mpp, SPOT_DIAMETER_UM)
