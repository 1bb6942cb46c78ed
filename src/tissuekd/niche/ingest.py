"""Ingest one Xenium slide: cells registered onto the H&E, counts, and slide metadata."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tissuekd.errors import InputError
from tissuekd.io.alignment import he_mpp, read_alignment, um_to_he
from tissuekd.io.atomic import atomic_path
from tissuekd.io.columns import CELL_ID, UNANNOTATED, UNKNOWN_TYPE, XY_UM
from tissuekd.io.wsi import check_pixel_size, open_slide
from tissuekd.io.xenium import load_bundle, read_clusters, read_labels
from tissuekd.niche.he_agreement import BIN_UM, MIN_Z, stain_agreement

log = logging.getLogger(__name__)


MAX_OUTSIDE = 0.01  # share of cells that may fall off the H&E (a scan cropped a little tighter than the
# Xenium region); more means the wrong alignment


def register_cells(cells: pd.DataFrame, affine: np.ndarray, pixel_size: float, image_size: tuple[int, int],
                   alignment_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """H&E pixel positions of the cells, and which land inside the image: up to MAX_OUTSIDE of
    them may fall off it (left out of the slide, logged); more is an error.

    Parameters
    ----------
    cells : pandas.DataFrame
        The Xenium cells, indexed by cell_id, with centroids `x_um`, `y_um` (µm, Xenium frame).
    affine : np.ndarray
        3x3 alignment, H&E level-0 px -> morphology-image px (io.alignment.read_alignment).
    pixel_size : float
        µm per morphology-image pixel (experiment.xenium).
    image_size : tuple of int
        (width, height) of the H&E at level 0, px.
    alignment_path : str or Path
        The alignment file, named in the error.

    Returns
    -------
    he : np.ndarray
        (cells, 2) x, y on the H&E, level-0 px.
    inside : np.ndarray
        (cells,) bool: the cell lies on the image.

    Raises
    ------
    InputError
        When the affine maps more than MAX_OUTSIDE of the cells outside the image (e.g. the alignment of
        another slide, or inverted).
    """
    he = um_to_he(cells[XY_UM].to_numpy(), affine, pixel_size)
    width, height = image_size
    outside = (he[:, 0] < 0) | (he[:, 1] < 0) | (he[:, 0] >= width) | (he[:, 1] >= height)
    if 0 < outside.mean() <= MAX_OUTSIDE:
        log.warning("%s: %d of %d cells fall outside the H&E image (%d x %d px); they are left out",
                    alignment_path, outside.sum(), len(he), width, height)
    elif outside.any():
        first = np.flatnonzero(outside)[0]
        raise InputError(
            alignment_path,
            f"the affine maps {outside.sum()} of {len(he)} cells outside the H&E image ({width} x {height} px); "
            f"e.g. cell {cells.index[first]} at ({he[first, 0]:.0f}, {he[first, 1]:.0f}) px. "
            "Is this the alignment of this slide's H&E, in the H&E -> morphology direction?",
        )
    return he, ~outside


def matched_labels(cells: pd.Index, labels: pd.Series, source: str | Path, fill: str) -> pd.Series:
    """A label table on the slide's cells, `fill` where it has none. A table that matches no
    cell is an error (ids of another slide, or another id style); rows that match no cell are
    counted in a warning (a partly wrong table would otherwise pass unseen)."""
    covered = cells.isin(labels.index)
    if not covered.any():
        raise InputError(source, f"no cell id matches the Xenium cells (e.g. {list(labels.index[:2])} vs "
                                 f"{list(cells[:2])})")
    strangers = (~labels.index.isin(cells)).sum()
    if strangers:
        log.warning("%s: %d of its %d rows name no cell of this slide; they are ignored", source, strangers,
                    len(labels))
    log.info("%s: labels for %d of %d cells (%d classes)", source, covered.sum(), len(cells), labels.nunique())
    if labels.nunique() == 1:
        log.warning("%s: every row has the one label %r (is the label its second column?)", source, labels.iloc[0])
    return labels.reindex(cells).fillna(fill)


def cell_type_labels(cells: pd.Index, bundle: str | Path, cell_types: str | None) -> pd.Series:
    """The sheet's annotation if given, else Xenium's graph clusters, else 'unknown'."""
    if cell_types:
        labels = read_labels(cell_types)
        source = cell_types
    else:
        labels = read_clusters(bundle)
        source = f"{bundle} graph-based clusters"
        if labels is None:
            log.warning("no cell-type annotation and no clusters.csv in %s: cell types are 'unknown'", bundle)
            return pd.Series(UNKNOWN_TYPE, index=cells)
        labels = "cluster_" + labels
    return matched_labels(cells, labels, source, UNKNOWN_TYPE)


def write_labels(cells_path: str, out: str, bundle: str, cell_types: str | None = None, pathology: str | None = None,
                 truth: str | None = None) -> None:
    """The rule niche_labels: the slide's per-cell annotations in the row order of cells.parquet,
    apart from it so that editing them reruns only evaluation and maps (nothing else reads them).

    Parameters
    ----------
    cells_path : str
        The slide's cells.parquet (ingest).
    out : str
        labels.parquet written: `cell_id`, `cell_type`, and `pathology` (cells absent: "unannotated")
        and `truth` (cells absent: "") where given.
    bundle : str
        The Xenium output folder, whose graph-based clusters are the cell types without `cell_types`.
    cell_types : str or None
        Table of cell_id -> cell type (CSV, TSV, parquet or Excel); None: Xenium's clusters, else "unknown".
    pathology, truth : str or None
        Tables of cell_id -> pathology annotation (the region a pathologist drew) / known niche.
    """
    cells = pd.Index(pd.read_parquet(cells_path, columns=[CELL_ID])[CELL_ID], name=CELL_ID)
    table = pd.DataFrame({"cell_type": cell_type_labels(cells, bundle, cell_types)}, index=cells)
    if pathology:
        table["pathology"] = matched_labels(cells, read_labels(pathology), pathology, UNANNOTATED)
    if truth:
        table["truth"] = matched_labels(cells, read_labels(truth).astype(str), truth, "")
    with atomic_path(out) as tmp:
        table.reset_index().to_parquet(tmp, index=False)


def check_he_scale(affine: np.ndarray, pixel_size: float, image_mpp: float | None, tolerance: float | None,
                   alignment_path: str | Path, image_path: str | Path, from_sheet: bool = False) -> None:
    """The alignment's µm per H&E pixel must agree with the image's (its metadata's, or the sheet's
    `he_mpp`) within `tolerance` (a share): a wrong scale moves cells by that share of their
    distance from the origin, millimetres on a slide, and no other check sees it. None (or an
    image without a resolution): not checked, with a warning."""
    implied = he_mpp(affine, pixel_size)
    if image_mpp is None or tolerance is None:
        log.warning("%s: %.4f um per H&E pixel, not compared with the image (%s)", alignment_path, implied,
                    "no resolution in its metadata" if image_mpp is None else "niche.he_mpp_tolerance: null")
        return
    if abs(implied / image_mpp - 1) > tolerance:
        stated = f"the sheet's he_mpp for {image_path} is" if from_sheet else f"{image_path} states"
        if abs(pixel_size**2 / implied / image_mpp - 1) <= tolerance:  # the inverse matrix: 1/scale
            hint = "it looks inverted (morphology -> H&E): give the H&E -> morphology matrix Xenium writes"
        else:
            hint = ("is this the alignment of this image at full resolution, and the image the H&E? "
                    + ("(Is the sheet's he_mpp right?)" if from_sheet
                       else "(If the image's metadata is wrong, give the slide's he_mpp in the sheet)"))
        raise InputError(alignment_path, f"implies {implied:.4f} um per H&E pixel, but {stated} {image_mpp:.4f} "
                                         f"({implied / image_mpp:.2f}x): {hint}")


def check_stain_agreement(he_image: str, backend: str, he_xy: np.ndarray, mpp: float,
                          he_alignment: str) -> dict | None:
    """he_agreement.stain_agreement, logged: a warning where the cells match the H&E's nuclei no
    better at the alignment than moved off it (another slide's H&E, a wrong alignment)."""
    with open_slide(he_image, backend) as slide:
        agreement = stain_agreement(slide, he_xy, mpp)
    if agreement is None:
        log.info("%s: no level fine enough to compare the cells with its nuclei (bins of %g um)", he_image, BIN_UM)
    elif agreement["z"] < MIN_Z:
        log.warning("%s with %s: the cells match the H&E's nuclei hardly better at the alignment (r = %.2f) than "
                    "moved 24-48 um off it (mean r %.2f): r at the alignment stands only %.1f SDs above that mean "
                    "(a right alignment: %g or more). Is this the slide's H&E, and the alignment its own?",
                    he_image, he_alignment, agreement["r"], agreement["r_moved"], agreement["z"], MIN_Z)
    else:
        log.info("%s: the cells match the H&E's nuclei best at the alignment (r = %.2f; moved 24-48 um: mean %.2f; "
                 "r stands %.1f SDs above it)", he_image, agreement["r"], agreement["r_moved"], agreement["z"])
    return agreement


def ingest_slide(bundle: str, he_image: str, he_alignment: str, out_cells: str, out_expression: str,
                 out_slide: str, backend: str = "auto", mpp_tolerance: float | None = 0.1,
                 sheet_mpp: float | None = None) -> None:
    """The rule niche_ingest: one Xenium slide's cells placed on its H&E, its counts, and its
    metadata (the slide's annotations, cell types included: write_labels).

    Parameters
    ----------
    bundle : str
        The Xenium output folder (`outs/`: experiment.xenium, cells.parquet or cells.csv.gz,
        cell_feature_matrix.h5).
    he_image : str
        The slide's post-Xenium H&E image; its level-0 size and resolution are read here, and a
        thumbnail to compare its nuclei with the cells (check_stain_agreement).
    he_alignment : str
        Xenium's `*_he_imagealignment.csv`: a 3x3 affine, H&E level-0 px -> morphology-image px.
    out_cells : str
        cells.parquet written: `cell_id`, `x_um`, `y_um` (µm, Xenium frame), `x_he`, `y_he` (H&E level-0 px).
    out_expression : str
        expression.h5ad written: gene counts, cells x genes.
    out_slide : str
        slide.json written: `pixel_size` (µm per morphology px), `affine`, `he_mpp` (µm per H&E level-0 px),
        `he_size` (level-0 width, height in px), `n_cells`, `n_genes`, ...
    backend : str, default "auto"
        Slide reader: "auto" (tifffile for OME-TIFF, OpenSlide otherwise), "openslide" or "tifffile".
    mpp_tolerance : float or None, default 0.1
        How far (a share) the alignment's µm per H&E pixel may be from the image's (check_he_scale).
    sheet_mpp : float or None
        The sheet's `he_mpp`: the H&E's µm per pixel where its metadata lacks it or is wrong.
    """
    affine = read_alignment(he_alignment)  # the small inputs first: a bad one stops before the matrix is read
    if sheet_mpp is not None:
        check_pixel_size(sheet_mpp, he_image, "the sheet's he_mpp for it,")
    with open_slide(he_image, backend) as slide:
        image_size, image_mpp = slide.dimensions, sheet_mpp if sheet_mpp is not None else slide.mpp
    cells, counts, meta = load_bundle(bundle)
    pixel_size = float(meta["pixel_size"])
    check_he_scale(affine, pixel_size, image_mpp, mpp_tolerance, he_alignment, he_image, sheet_mpp is not None)
    he, inside = register_cells(cells, affine, pixel_size, image_size, he_alignment)
    if not inside.all():
        cells, counts, he = cells[inside], counts[inside].copy(), he[inside]
    table = cells.assign(x_he=he[:, 0], y_he=he[:, 1])
    log.info("%s: %d cells, %d genes, H&E %.4f um/px", bundle, len(table), counts.n_vars, he_mpp(affine, pixel_size))
    agreement = check_stain_agreement(he_image, backend, he, he_mpp(affine, pixel_size), he_alignment)

    with atomic_path(out_cells) as tmp:
        table.reset_index().to_parquet(tmp, index=False)
    with atomic_path(out_expression) as tmp:
        counts.write_h5ad(tmp)
    info = {
        "bundle": str(bundle), "he_image": str(he_image), "pixel_size": pixel_size,
        "affine": affine.tolist(), "he_mpp": he_mpp(affine, pixel_size), "he_image_mpp": image_mpp,
        "he_size": list(image_size), "n_cells": len(table), "n_genes": int(counts.n_vars),
        "xenium_version": meta.get("analysis_sw_version"), "he_stain_agreement": agreement,
    }
    with atomic_path(out_slide) as tmp:
        tmp.write_text(json.dumps(info, indent=2))


SLIDE_COLUMNS = ["slide", "n_cells", "n_genes", "he_mpp", "he_r", "he_r_moved", "he_z", "he_flagged", "he_check"]


def slides_table(slide_jsons: list[str]) -> pd.DataFrame:
    """Every slide's ingest (its slide.json) as one row of the report's slide table: cells, genes,
    the H&E's resolution and whether the cells sit on its nuclei (check_stain_agreement), so a
    slide whose H&E or alignment is not its own is seen where its scores are read. Each such slide
    is warned of again here."""
    rows = []
    for path in slide_jsons:
        info = json.loads(Path(path).read_text())
        agreement = info.get("he_stain_agreement") or {}
        z = agreement.get("z")
        if z is None:
            check = "not measured (no H&E level fine enough)"
        elif z >= MIN_Z:
            check = "cells on the nuclei"
        else:
            check = (f"CHECK: the cells hardly sit on the H&E's nuclei (he_z < {MIN_Z:g}): is the H&E or the "
                     "alignment another slide's?")
            log.warning("slide %s: %s (r = %s at the alignment, %s moved off it; z = %s; %s)", Path(path).parent.name,
                        check, agreement.get("r"), agreement.get("r_moved"), z, info.get("he_image"))
        rows.append({"slide": Path(path).parent.name, "n_cells": info.get("n_cells"), "n_genes": info.get("n_genes"),
                     "he_mpp": round(info["he_mpp"], 4), "he_r": agreement.get("r"),
                     "he_r_moved": agreement.get("r_moved"), "he_z": z, "he_flagged": z is not None and z < MIN_Z,
                     "he_check": check})
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS)
