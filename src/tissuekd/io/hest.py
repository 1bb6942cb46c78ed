"""Spot-level spatial transcriptomics samples in the HEST-1k layout (mahmoodlab/HEST):
`st/<id>.h5ad` (spots x genes, raw counts; spot centres in level-0 pixels of the WSI as (x, y)
in `obsm["spatial"]`), `wsis/<id>.tif` and `metadata/<id>.json` (`pixel_size_um_estimated`, µm
per level-0 pixel; `spot_diameter` and `inter_spot_dist` in µm), and optionally
`tissue_seg/<id>_contours.geojson` (the tissue's outline in level-0 pixels). HEST's `in_tissue`
is True for every pseudo-spot of its Xenium and Visium HD samples (bins over the transcripts'
bounding box): there the contours are what tells tissue from background."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from tissuekd.errors import InputError
from tissuekd.io.counts import empty_rows
from tissuekd.io.wsi import check_pixel_size, open_slide

log = logging.getLogger(__name__)
MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")  # HEST's own reader uses the first
# Xenium's control features, which HEST's pooled pseudo-spots keep as genes
CONTROL_FEATURES = re.compile(r"^(BLANK|NegControl|NegPrb|Unassigned|Deprecated|Intergenic|antisense_)", re.I)
MAX_OFF_IMAGE = 0.5  # above this share of spots off the image, the coordinates belong to another image


@dataclass
class SpotSample:
    """Spots under tissue: barcodes, centres (x, y) in level-0 pixels, raw counts (spots x genes)."""

    barcodes: np.ndarray
    xy: np.ndarray
    counts: sparse.csr_matrix
    genes: np.ndarray
    mpp: float
    spot_diameter_um: float


def read_hest(st: str | Path, metadata: str | Path | None, image: str | Path | None, backend: str = "auto",
              tissue_seg: str | Path | None = None) -> SpotSample:
    """One HEST sample: spots with `in_tissue` 0 (where the column exists), outside the
    `tissue_seg` contours (where given) or off the image are left out (logged), and Xenium's
    control features. Without `metadata` and `image` (a sheet that gives the release's patch
    file) the pixel size is unknown (NaN) and nothing is checked against the image.

    Raises
    ------
    InputError
        Naming the file: no pixel size in the metadata, no `obsm["spatial"]`, negative or
        non-finite counts, no spots, or most spot centres off the image.
    """
    mpp = math.nan
    if metadata:
        meta = read_metadata(metadata)
        mpp = metadata_pixel_size(meta, metadata)
    adata = read_st(st)
    if "spatial" not in adata.obsm:
        raise InputError(st, 'no obsm["spatial"] (spot centres in level-0 pixels)')
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(st, f'obsm["spatial"] must hold (x, y) pixel coordinates per spot, got shape {xy.shape}')
    check_centres(xy, adata.obs_names, st, 'obsm["spatial"]')
    if metadata and positive(meta.get("inter_spot_dist")):
        check_spot_spacing(xy, mpp, float(meta["inter_spot_dist"]), metadata)
    keep = in_tissue(adata, st)
    if tissue_seg:
        keep &= inside_contours(xy, tissue_seg)
    if image:
        keep &= on_image(xy, image, st, backend)
    adata, xy = adata[keep], xy[keep]
    if adata.n_obs == 0:
        raise InputError(st, "no spots under tissue")
    controls = adata.var_names.str.match(CONTROL_FEATURES)
    if controls.any():
        log.info("%s: %d control features left out (e.g. %s)", st, controls.sum(), adata.var_names[controls][0])
        adata = adata[:, ~controls]
    if adata.var_names.duplicated().any():  # symbols two Ensembl ids share: made unique as for Space Ranger's
        log.warning("%s: %d gene names repeated (e.g. %s): made unique as scanpy does (NAME-1, …)", st,
                    adata.var_names.duplicated().sum(), adata.var_names[adata.var_names.duplicated()][0])
        adata = adata.copy()
        adata.var_names_make_unique()
    counts = check_counts(sparse.csr_matrix(adata.X, dtype=np.float32), st)
    diameter = meta.get("spot_diameter") if metadata else None
    return SpotSample(np.asarray(adata.obs_names, dtype=str), xy, counts, np.asarray(adata.var_names, dtype=str),
                      mpp, float(diameter) if positive(diameter) else 55.0)


def read_st(st: str | Path) -> ad.AnnData:
    """The h5ad of spots: one AnnData with counts in X and one row per barcode."""
    try:
        adata = ad.read_h5ad(st)
    except Exception as err:  # noqa: BLE001 - h5py and anndata raise many kinds on a file that is not one
        raise InputError(st, f"not a readable AnnData h5ad file ({type(err).__name__}: {err})") from None
    if adata.X is None:
        raise InputError(st, f"no counts in X (layers: {list(adata.layers) or 'none'}): HEST keeps raw counts in X")
    if adata.obs_names.duplicated().any():
        raise InputError(st, f"duplicate spot barcodes (obs_names), "
                             f"e.g. {adata.obs_names[adata.obs_names.duplicated()][:3].tolist()}")
    return adata


def check_centres(xy: np.ndarray, barcodes, path: str | Path, what: str) -> None:
    """Every spot centre finite: a NaN one cannot be cut, and would pass as 'off the image'."""
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise InputError(path, f"{bad.sum()} of {len(xy)} spots have no finite {what} centre (NaN or inf), "
                               f"e.g. {np.asarray(barcodes)[bad][:3].tolist()}")


def check_counts(counts: sparse.csr_matrix, path: str | Path) -> sparse.csr_matrix:
    """Raw counts: finite and non-negative (an error naming `path`); not whole numbers is logged,
    since they are normalised as raw counts are."""
    if counts.nnz and (not np.isfinite(counts.data).all() or counts.data.min() < 0):
        raise InputError(path, "counts must be finite and non-negative (raw counts are expected)")
    if counts.nnz and not np.array_equal(counts.data[:10000], np.round(counts.data[:10000])):
        log.warning("%s: counts are not whole numbers: normalised as raw counts are (total counts, log1p), "
                    "so already normalised values are normalised twice", path)
    return counts


def drop_empty_spots(sample: SpotSample, path: str | Path) -> SpotSample:
    """Spots without a single count are left out (as scanpy's filter_cells(min_counts=1) would):
    their normalised expression is no measurement. Counted in the log; most spots empty is an
    error (io.counts)."""
    keep = ~empty_rows(sample.counts, path, "spots under tissue", "left out")
    return SpotSample(sample.barcodes[keep], sample.xy[keep], sample.counts[keep], sample.genes, sample.mpp,
                      sample.spot_diameter_um)


def metadata_pixel_size(meta: dict, path: str | Path) -> float:
    """µm per level-0 pixel: the first of MPP_KEYS that holds a positive number (a value that is
    not one is named in a warning), checked against what a slide scan can have."""
    for key in MPP_KEYS:
        value = meta.get(key)
        if positive(value):
            mpp = check_pixel_size(float(value), path, key)
            log.info("%s: %s µm per pixel from %s", path, mpp, key)
            return mpp
        if value is not None and not (isinstance(value, float) and math.isnan(value)):  # None, NaN: not given
            log.warning("%s: %s is %r, not a positive number of µm per pixel: ignored", path, key, value)
    raise InputError(path, f"no pixel size: needs one of {list(MPP_KEYS)} (µm per level-0 pixel, a positive number)")


SPACING_TOLERANCE = 1.5  # the spot pitch in pixels times the pixel size vs the metadata's inter_spot_dist


def check_spot_spacing(xy: np.ndarray, mpp: float, inter_spot_dist: float, path: str | Path) -> None:
    """Warn when the spots' median nearest-neighbour distance, in µm at `mpp`, is not the
    metadata's `inter_spot_dist`: one of the two (most often the pixel size) is wrong, and the
    patches would span another size than the protocol's."""
    from scipy.spatial import cKDTree

    if len(xy) < 10:
        return
    distance, _ = cKDTree(xy).query(xy, k=2)
    pitch_um = float(np.median(distance[:, 1])) * mpp
    if pitch_um > 0 and max(pitch_um, inter_spot_dist) / min(pitch_um, inter_spot_dist) > SPACING_TOLERANCE:
        log.warning("%s: neighbouring spots lie %.4g µm apart at %.4g µm per pixel, but inter_spot_dist is %.4g µm: "
                    "is the pixel size right? (patches are cut at it)", path, pitch_um, mpp, inter_spot_dist)


def positive(value) -> bool:
    """A positive finite number, or text of one (metadata values may be null, NaN or text)."""
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def in_tissue(adata: ad.AnnData, where: str | Path) -> np.ndarray:
    """`obs["in_tissue"]` == 1 where the column exists; a missing value (HEST's merges leave
    NaN) counts as under tissue, logged."""
    if "in_tissue" not in adata.obs:
        return np.ones(adata.n_obs, bool)
    flag = pd.to_numeric(adata.obs["in_tissue"], errors="coerce").to_numpy()
    if np.isnan(flag).any():
        log.warning("%s: in_tissue is missing or not a number for %d spots: kept as under tissue", where,
                    np.isnan(flag).sum())
    return (flag == 1) | np.isnan(flag)


def inside_contours(xy: np.ndarray, path: str | Path) -> np.ndarray:
    """Spots whose centre lies in the tissue: inside a polygon of the GeoJSON (level-0 pixels,
    HEST's tissue_seg contours) and outside its holes."""
    from matplotlib.path import Path as Polygon

    try:
        geojson = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable GeoJSON file ({err})") from None
    features = geojson.get("features", [geojson]) if isinstance(geojson, dict) else []
    inside = np.zeros(len(xy), bool)
    for feature in features:
        geometry = (feature or {}).get("geometry") or {}
        polygons = {"Polygon": [geometry.get("coordinates")],
                    "MultiPolygon": geometry.get("coordinates")}.get(geometry.get("type"), [])
        for rings in polygons:
            if not rings:
                continue
            part = Polygon(np.asarray(rings[0], float)[:, :2]).contains_points(xy)
            for hole in rings[1:]:
                part &= ~Polygon(np.asarray(hole, float)[:, :2]).contains_points(xy)
            inside |= part
    if not features or not inside.any():
        raise InputError(path, f"no spot centre lies inside its tissue polygons ({len(features)} feature(s)): "
                               "are they the contours of this sample, in level-0 pixels?")
    log.info("%s: %d of %d spots inside the tissue contours", path, inside.sum(), len(xy))
    return inside


def read_metadata(path: str | Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable JSON file ({err})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "must be a JSON object")
    return meta


def on_image(xy: np.ndarray, image: str | Path, where: str | Path, backend: str = "auto") -> np.ndarray:
    """Which spot centres lie on the image (level-0 pixels). A few off it are left out, logged,
    as HEST's own patching does (some releases list spots a little beyond the scan); most or
    all off it is an error: the coordinates belong to another image or resolution."""
    with open_slide(image, backend) as slide:
        width, height = slide.dimensions
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < width) & (xy[:, 1] < height)
    if inside.mean() < 1 - MAX_OFF_IMAGE:
        raise InputError(where, f"{(~inside).sum()} of {len(xy)} spot centres lie off the image {image} "
                                f"({width} x {height} px), e.g. {xy[~inside][0].round(1).tolist()}: do the "
                                "coordinates belong to another image or resolution?")
    if not inside.all():
        log.warning("%s: %d of %d spot centres lie off the image %s (%d x %d px); left out", where,
                    (~inside).sum(), len(xy), image, width, height)
    return inside


# ---- patches/<id>.h5: the release's patches, cut around each spot ----------------------------

HEST_PATCH_MPP = 0.5  # µm per pixel of the releases' patches (224 px: the 112 µm of the HEST protocol)


def read_patch_index(path: str | Path) -> tuple[np.ndarray, int]:
    """Barcodes (one per patch, in file order) and side in pixels of a HEST patch file: `img`
    (patches, side, side, 3) uint8, `barcode` ((patches,) or (patches, 1) strings), `coords`.

    Raises
    ------
    InputError
        Naming the file: not HDF5, no `img` or `barcode`, `img` of another shape or type,
        barcode and image counts that differ, or a barcode twice.
    """
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, f"not a readable HDF5 file ({err})") from None
    with h5:
        for key in ("img", "barcode"):
            if key not in h5:
                raise InputError(path, f"no `{key}` dataset (a HEST patch file holds img, barcode and coords)")
        img = h5["img"]
        if img.ndim != 4 or img.shape[3] != 3 or img.shape[1] != img.shape[2] or img.dtype != np.uint8:
            raise InputError(path, f"`img` must be square uint8 RGB patches (n, side, side, 3), got {img.dtype} "
                                   f"{img.shape}")
        raw = h5["barcode"][:].reshape(-1)
        if len(raw) != img.shape[0]:
            raise InputError(path, f"{len(raw)} barcodes for {img.shape[0]} patches")
        side = int(img.shape[1])
    barcodes = np.array([b.decode() if isinstance(b, bytes) else str(b) for b in raw])
    unique, counts = np.unique(barcodes, return_counts=True)
    if (counts > 1).any():
        raise InputError(path, f"duplicate barcodes, e.g. {unique[counts > 1][:3].tolist()}")
    return barcodes, side
