"""Spatial transcriptomics samples in the HEST-1k layout (and one in Space Ranger's), for the
expression study.

One sample is an H&E whole-slide image (1 µm/px) with Visium-like spots (55 µm across,
100 µm apart on a hexagonal grid) over its tissue, written as HEST releases it:
`st/<id>.h5ad` (raw counts; spot centres in level-0 pixels, (x, y), in `obsm["spatial"]`),
`wsis/<id>.tif` (pyramidal) and `metadata/<id>.json`.

What a method can learn: each dataset has four tissue compartments, each drawn with its own
nuclear density, nucleus size and eosin, and each expressing its own program; a smooth
inflammation level adds lymphocyte-like nuclei and an immune program. A spot's expected
expression is the mix of the compartments under its footprint plus the immune program,
sampled as Poisson counts with a per-spot library size and gene-level noise, so expression
follows what the H&E shows, with noise. The truth (compartment shares, inflammation) is
written beside each sample in `truth/<id>.parquet`.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from tissuekd.demo.survival import EOSIN, HEMATOXYLIN, nuclei, smooth_field, write_svs
from tissuekd.demo.xenium import write_10x_h5
from tissuekd.io.atomic import atomic_path

MPP = 1.0  # µm per level-0 pixel
SIZE = (2000, 2400)  # rows, cols: 2.0 x 2.4 mm of tissue section
SPOT_DIAMETER_UM = 55.0
SPOT_SPACING_UM = 100.0
N_GENES = 120
PROGRAM_GENES = 12  # genes per compartment program (and the immune program)
COMPARTMENTS = 4
# nuclear density (per 100 px^2), nucleus blur (px), eosin per compartment; the same four looks
# in every dataset, expressing dataset-specific programs
LOOKS = [(2.6, 2.4, 0.35), (0.5, 1.3, 0.75), (1.6, 1.7, 0.45), (0.9, 3.2, 0.2)]
DATASETS = {"IDC": 0, "COAD": 1, "LUAD": 2}  # name -> program offset (which genes each compartment uses)


def gene_names() -> list[str]:
    return [f"GENE{i:03d}" for i in range(N_GENES)]


def programs(dataset: str) -> np.ndarray:
    """(COMPARTMENTS + 1, N_GENES) log-rates: a shared baseline, each compartment's program raised
    by 2.5 (e ~ 12-fold), the last row the immune program's increment."""
    rng = np.random.default_rng(zlib.crc32(dataset.encode()))
    base = rng.normal(-1.0, 1.0, N_GENES)
    rows = np.tile(base, (COMPARTMENTS + 1, 1))
    order = np.roll(np.arange(N_GENES), DATASETS[dataset] * 7)
    for c in range(COMPARTMENTS + 1):
        rows[c, order[c * PROGRAM_GENES : (c + 1) * PROGRAM_GENES]] += 2.5
    rows[COMPARTMENTS] -= base  # an increment, not a profile
    return rows


def spot_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal Visium-like grid: centres (x, y) in px and (array_row, array_col)."""
    step = SPOT_SPACING_UM / MPP
    rows = np.arange(step, shape[0] - step, step * np.sqrt(3) / 2)
    xy, rc = [], []
    for r, y in enumerate(rows):
        for c, x in enumerate(np.arange(step + (step / 2) * (r % 2), shape[1] - step, step)):
            xy.append((x, y))
            rc.append((r, 2 * c + r % 2))
    return np.array(xy), np.array(rc)


def paint(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RGB image, tissue mask, compartment map and inflammation level in [0, 1]."""
    coarse = tuple(s // 8 for s in SIZE)
    zoom = lambda f: np.kron(f, np.ones((8, 8), f.dtype))  # noqa: E731
    tissue = zoom(ndimage.binary_opening(smooth_field(rng, coarse, 25) > -0.6, iterations=2))
    compartment = zoom(np.argmax(np.stack([smooth_field(rng, coarse, 12) for _ in range(COMPARTMENTS)]), axis=0))
    inflammation = zoom(1 / (1 + np.exp(-2.5 * smooth_field(rng, coarse, 18))))
    hema = np.zeros(SIZE, np.float32)
    eosin = np.zeros(SIZE, np.float32)
    for c, (density, sigma, e) in enumerate(LOOKS):
        region = tissue & (compartment == c)
        hema += nuclei(rng, region, density, sigma, 0.9)
        eosin += np.where(region, e, 0.0).astype(np.float32)
    hema += nuclei(rng, tissue & (rng.random(SIZE) < inflammation), 1.2, 1.0, 1.3)  # lymphocyte-like
    eosin *= 1 + 0.1 * zoom(smooth_field(rng, coarse, 2))
    h_gain, e_gain = np.exp(rng.normal(0, 0.1, 2))  # a little stain variation between samples
    od = hema[..., None] * HEMATOXYLIN * h_gain + eosin[..., None] * EOSIN * e_gain
    rgb = np.clip(255 * np.exp(-od) * (0.97 + 0.03 * rng.random(SIZE))[..., None], 0, 255).astype(np.uint8)
    return rgb, tissue, compartment, inflammation


def spot_truth(xy: np.ndarray, compartment: np.ndarray, inflammation: np.ndarray) -> np.ndarray:
    """(spots, COMPARTMENTS + 1): each compartment's share of the spot's footprint, then its mean inflammation."""
    radius = SPOT_DIAMETER_UM / 2 / MPP
    yy, xx = np.mgrid[-int(radius) : int(radius) + 1, -int(radius) : int(radius) + 1]
    disk = (yy**2 + xx**2) <= radius**2
    dy, dx = yy[disk], xx[disk]
    out = np.zeros((len(xy), COMPARTMENTS + 1))
    for i, (x, y) in enumerate(np.round(xy).astype(int)):
        comp = compartment[y + dy, x + dx]
        out[i, :COMPARTMENTS] = np.bincount(comp, minlength=COMPARTMENTS) / len(comp)
        out[i, COMPARTMENTS] = inflammation[y + dy, x + dx].mean()
    return out


def counts_of(truth: np.ndarray, dataset: str, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts: rates from the compartment mix plus the immune increment, gene-level noise."""
    prog = programs(dataset)
    log_rate = np.log(truth[:, :COMPARTMENTS] @ np.exp(prog[:COMPARTMENTS]) + 1e-9)
    log_rate += 2.0 * truth[:, COMPARTMENTS : COMPARTMENTS + 1] * (prog[COMPARTMENTS] > 0)
    log_rate += rng.normal(0, 0.3, log_rate.shape)
    rate = np.exp(log_rate)
    library = rng.lognormal(np.log(3000), 0.3, len(truth))
    return rng.poisson(rate / rate.sum(1, keepdims=True) * library[:, None])


def simulate(sample: str, dataset: str, seed: int):
    """One sample's image, every grid spot (centres, array row/col, under tissue or not), and
    the counts and truth of the spots under tissue."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.encode())])
    rgb, tissue, compartment, inflammation = paint(rng)
    xy, rc = spot_grid(SIZE)
    under = tissue[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    truth = spot_truth(xy[under], compartment, inflammation)
    counts = counts_of(truth, dataset, rng)
    barcodes = np.array([f"{sample}-{r:03d}x{c:03d}-1" for r, c in rc])
    return rgb, xy, rc, under, barcodes, counts, truth


def write_truth(path: Path, truth: np.ndarray, barcodes: np.ndarray) -> None:
    columns = [f"compartment_{c}" for c in range(COMPARTMENTS)] + ["inflammation"]
    with atomic_path(path) as tmp:
        pd.DataFrame(truth, columns=columns).assign(barcode=barcodes).to_parquet(tmp, index=False)


def make_sample(root: str | Path, sample: str, dataset: str, patient: str, seed: int) -> None:
    """Write one sample in the HEST layout under `root` (st/, wsis/, metadata/, truth/)."""
    root = Path(root)
    rgb, xy, rc, under, barcodes, counts, truth = simulate(sample, dataset, seed)
    xy, rc, barcodes = xy[under], rc[under], barcodes[under]
    obs = pd.DataFrame({"in_tissue": 1, "array_row": rc[:, 0], "array_col": rc[:, 1],
                        "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]}, index=barcodes)
    adata = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=gene_names()))
    adata.obsm["spatial"] = xy.astype(np.float64)
    write_svs(root / "wsis" / f"{sample}.tif", rgb, mpp=MPP, magnification=10)
    with atomic_path(root / "st" / f"{sample}.h5ad") as tmp:
        adata.write_h5ad(tmp)
    meta = {"id": sample, "dataset_title": f"tissuekd demo {dataset}", "patient": patient, "organ": dataset,
            "st_technology": "Visium", "pixel_size_um_estimated": MPP, "pixel_size_um_embedded": MPP,
            "spot_diameter": SPOT_DIAMETER_UM, "inter_spot_dist": SPOT_SPACING_UM,
            "fullres_px_width": SIZE[1], "fullres_px_height": SIZE[0], "magnification": "10x",
            "spots_under_tissue": len(xy), "nb_genes": N_GENES}
    with atomic_path(root / "metadata" / f"{sample}.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    write_truth(root / "truth" / f"{sample}.parquet", truth, barcodes)


def make_spaceranger_sample(root: str | Path, sample: str, dataset: str, seed: int) -> None:
    """Write one sample as Space Ranger (>= 2.0) leaves it, under `root`/<sample>/: outs/ with
    filtered_feature_bc_matrix.h5 (spots under tissue), spatial/tissue_positions.csv (every
    spot, with header), scalefactors_json.json and the hires/lowres PNGs; the full-resolution
    H&E beside outs/ as <sample>.tif (Space Ranger takes it as input and does not copy it)."""
    from PIL import Image

    root = Path(root) / sample
    rgb, xy, rc, under, barcodes, counts, truth = simulate(sample, dataset, seed)
    spatial = root / "outs" / "spatial"
    write_svs(root / f"{sample}.tif", rgb, mpp=MPP, magnification=10)
    write_10x_h5(root / "outs" / "filtered_feature_bc_matrix.h5", list(barcodes[under]), gene_names(), [],
                 counts, np.zeros((len(counts), 0)))
    positions = pd.DataFrame({"barcode": barcodes, "in_tissue": under.astype(int), "array_row": rc[:, 0],
                              "array_col": rc[:, 1], "pxl_row_in_fullres": np.round(xy[:, 1]).astype(int),
                              "pxl_col_in_fullres": np.round(xy[:, 0]).astype(int)})
    with atomic_path(spatial / "tissue_positions.csv") as tmp:
        positions.to_csv(tmp, index=False)
    scale = {"hires": 2000 / max(SIZE), "lowres": 600 / max(SIZE)}
    for name, f in scale.items():
        with atomic_path(spatial / f"tissue_{name}_image.png") as tmp:
            Image.fromarray(rgb).resize((round(SIZE[1] * f), round(SIZE[0] * f))).save(tmp)
    # spot_diameter_fullres as Space Ranger writes it: the pixels of "a theoretical 65 µm spot"
    factors = {"spot_diameter_fullres": 65.0 / MPP, "fiducial_diameter_fullres": 89.5 / MPP,
               "tissue_hires_scalef": scale["hires"], "tissue_lowres_scalef": scale["lowres"]}
    with atomic_path(spatial / "scalefactors_json.json") as tmp:
        tmp.write_text(json.dumps(factors))
    write_truth(root / "truth.parquet", truth, barcodes[under])
