"""Write a demo slide as a real Xenium output bundle plus its post-Xenium H&E.

Layout of `outdir` (as 10x publishes it):
    outs/experiment.xenium, outs/cells.parquet, outs/cell_feature_matrix.h5,
    outs/analysis/clustering/gene_expression_graphclust/clusters.csv,
    {name}_he_image.ome.tif (pyramidal, tiled JPEG), {name}_he_imagealignment.csv,
    pathology.csv (cell_id, region: the annotation a pathologist would draw),
    niche_truth.csv (cell_id, niche: the niche the generator placed the cell in).
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile

from tissuekd.demo import DEMO_VERSION
from tissuekd.demo.layout import make_layout, make_panel, sample_counts
from tissuekd.demo.paint import paint_he
from tissuekd.demo.tissues import CELL_TYPES
from tissuekd.io.atomic import atomic_path

log = logging.getLogger(__name__)

PIXEL_SIZE = 0.2125  # Xenium morphology microns per pixel
HE_MPP = 0.25  # demo H&E microns per pixel (level 1 = 0.5 um/px, the demo encoder's)
MARGIN_PX = 320
ROTATION_DEG = {"breast": 8.0, "lung": -14.0, "colon": 21.0}


def cell_ids(n: int, rng: np.random.Generator) -> list[str]:
    """XOA >= 1.3 style ids ('aaabinlp-1'): an integer written in the letters a-p."""
    codes = rng.choice(16**8, size=n, replace=False)
    letters = np.array(list("abcdefghijklmnop"))
    digits = (codes[:, None] // 16 ** np.arange(7, -1, -1)) % 16
    return ["".join(row) + "-1" for row in letters[digits]]


def alignment(theta_deg: float, cells_um: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A rotated, scaled H&E -> morphology-px affine placing every cell inside the image.

    Returns the 3x3 affine, the cells' H&E pixel positions, and the image shape (rows, cols).
    """
    theta = np.deg2rad(theta_deg)
    scale = HE_MPP / PIXEL_SIZE
    linear = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    he = (cells_um / PIXEL_SIZE) @ np.linalg.inv(linear).T
    offset = MARGIN_PX - he.min(axis=0)
    he += offset
    affine = np.eye(3)
    affine[:2, :2] = linear
    affine[:2, 2] = -linear @ offset
    cols, rows = np.ceil(he.max(axis=0) + MARGIN_PX).astype(int)
    return affine, he, (int(rows), int(cols))


def write_10x_h5(path: Path, ids: list[str], genes: list[str], controls: list[tuple[str, str]],
                 gene_counts: np.ndarray, control_counts: np.ndarray) -> None:
    """The 10x HDF5 feature-barcode matrix: features x cells, stored column-compressed.

    Parameters
    ----------
    path : Path
        cell_feature_matrix.h5 written.
    ids : list of str
        Cell barcodes (the bundle's cell_id), one per cell.
    genes : list of str
        Gene names (feature type "Gene Expression").
    controls : list of (str, str)
        (name, 10x feature type) of each control probe or codeword.
    gene_counts : np.ndarray
        (cells, genes) counts.
    control_counts : np.ndarray
        (cells, controls) counts.
    """
    from scipy import sparse

    matrix = sparse.csr_matrix(np.hstack([gene_counts, control_counts]))  # cells x features = CSC of features x cells
    names = genes + [c[0] for c in controls]
    types = ["Gene Expression"] * len(genes) + [c[1] for c in controls]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({"filetype": "matrix", "version": 2, "software_version": "xenium-2.0.0"})
        g = h5.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(ids, dtype="S"))
        g.create_dataset("data", data=matrix.data.astype(np.uint32), compression="gzip")
        g.create_dataset("indices", data=matrix.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([len(names), len(ids)], dtype=np.int32))
        f = g.create_group("features")
        f.create_dataset("id", data=np.array([f"ENSG_DEMO{i:05d}" for i in range(len(names))], dtype="S"))
        f.create_dataset("name", data=np.array(names, dtype="S"))
        f.create_dataset("feature_type", data=np.array(types, dtype="S"))
        f.create_dataset("genome", data=np.array(["Unknown"] * len(names), dtype="S"))
        f.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, levels: int = 4) -> None:
    """Pyramidal OME-TIFF, 512-px JPEG tiles, reduced levels in SubIFDs (as Xenium's H&E)."""
    opts = dict(tile=(512, 512), compression="jpeg", compressionargs={"level": 88}, photometric="rgb")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
        tif.write(rgb, subifds=levels - 1, metadata=meta, **opts)
        level = rgb
        for _ in range(levels - 1):
            h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(level, subfiletype=1, **opts)


def make_demo_slide(outdir: str | Path, tissue: str, n_cells: int = 10_500, seed: int = 0) -> Path:
    """Generate one demo slide of `tissue` into `outdir`; returns the bundle (`outs/`) path."""
    outdir = Path(outdir)
    name = outdir.name
    rng = np.random.default_rng([seed, zlib.crc32(tissue.encode())])
    layout = make_layout(tissue, n_cells, rng)
    cells = layout.cells
    ids = cell_ids(len(cells), rng)
    panel = make_panel(np.random.default_rng(seed))  # one panel shared by every demo slide
    genes, controls = sample_counts(cells, panel, rng)
    log.info("%s: %d cells, %d genes, side %.0f um", name, len(cells), len(panel.genes), layout.side_um)

    bundle = outdir / "outs"
    affine, he_xy, shape = alignment(ROTATION_DEG.get(tissue, 10.0), cells[["x_um", "y_um"]].to_numpy())
    um_of_pixel = lambda px: (px @ affine[:2, :2].T + affine[:2, 2]) * PIXEL_SIZE  # noqa: E731
    theta = np.arctan2(affine[1, 0], affine[0, 0])
    rgb = paint_he(layout, he_xy, theta, shape, HE_MPP, um_of_pixel, rng)
    write_pyramid(outdir / f"{name}_he_image.ome.tif", rgb, HE_MPP)
    with atomic_path(outdir / f"{name}_he_imagealignment.csv") as tmp:
        np.savetxt(tmp, affine, delimiter=",", fmt="%.10g")

    nucleus_area = cells["cell_type"].map(lambda t: np.pi * CELL_TYPES[t].radius_um**2 * CELL_TYPES[t].aspect)
    table = pd.DataFrame({
        "cell_id": ids,
        "x_centroid": cells["x_um"].to_numpy(np.float32),
        "y_centroid": cells["y_um"].to_numpy(np.float32),
        "transcript_counts": genes.sum(axis=1),
        "control_probe_counts": controls[:, :12].sum(axis=1),
        "control_codeword_counts": controls[:, 12:18].sum(axis=1),
        "unassigned_codeword_counts": controls[:, 18:].sum(axis=1),
        "total_counts": genes.sum(axis=1) + controls.sum(axis=1),
        "cell_area": rng.uniform(40, 120, len(cells)).astype(np.float32),
        "nucleus_area": nucleus_area.to_numpy(np.float32),
    })
    with atomic_path(bundle / "cells.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    write_10x_h5(bundle / "cell_feature_matrix.h5", ids, panel.genes, panel.controls, genes, controls)
    _write_clusters(bundle, ids, cells["cell_type"].to_numpy(), rng)
    with atomic_path(outdir / "pathology.csv") as tmp:
        pd.DataFrame({"cell_id": ids, "region": cells["region"]}).to_csv(tmp, index=False)
    with atomic_path(outdir / "niche_truth.csv") as tmp:
        pd.DataFrame({"cell_id": ids, "niche": cells["niche"]}).to_csv(tmp, index=False)
    experiment = {
        "major_version": 5, "minor_version": 0, "run_name": f"tissuekd demo v{DEMO_VERSION}",
        "region_name": name, "panel_name": "tissuekd demo panel", "panel_tissue_type": tissue,
        "analysis_sw_version": "xenium-2.0.0.10", "pixel_size": PIXEL_SIZE, "num_cells": len(cells),
    }
    with atomic_path(bundle / "experiment.xenium") as tmp:
        tmp.write_text(json.dumps(experiment, indent=2))
    return bundle


def _write_clusters(bundle: Path, ids: list[str], cell_type: np.ndarray, rng: np.random.Generator) -> None:
    """Graph-based clusters as Xenium writes them: numbered 1..n, ~3% of cells mis-clustered."""
    names = sorted(set(cell_type))
    number = {t: i + 1 for i, t in enumerate(rng.permutation(names))}
    cluster = np.array([number[t] for t in cell_type])
    noisy = rng.random(len(ids)) < 0.03
    cluster[noisy] = rng.integers(1, len(names) + 1, noisy.sum())
    path = bundle / "analysis/clustering/gene_expression_graphclust/clusters.csv"
    with atomic_path(path) as tmp:
        pd.DataFrame({"Barcode": ids, "Cluster": cluster}).to_csv(tmp, index=False)
