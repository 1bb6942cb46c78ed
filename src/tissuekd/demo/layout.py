"""Where demo cells are and what they are: niche regions, positions, types, expression."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from tissuekd.demo.tissues import CELL_TYPES, TISSUES

GRID_UM = 8.0  # candidate spacing; niche densities thin it out
FIELD_UM = 4.0  # resolution of the niche label map
REGION_SCALE_UM = 55.0  # smoothing of the niche fields: niche patches are ~100-200 um across


@dataclass
class Layout:
    tissue: str
    side_um: float
    label_map: np.ndarray  # niche index per FIELD_UM pixel (rows = y)
    angle_map: np.ndarray  # orientation of spindle cells per FIELD_UM pixel
    cells: pd.DataFrame  # x_um, y_um, niche, region, cell_type


def _smooth_fields(rng: np.random.Generator, n: int, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap") for _ in range(n)])
    return fields / fields.std(axis=(1, 2), keepdims=True)


def make_layout(tissue: str, n_cells: int, rng: np.random.Generator) -> Layout:
    niches = TISSUES[tissue]
    density = np.array([n.density for n in niches])
    side = float(np.sqrt(n_cells * GRID_UM**2 / density.mean()) * 1.08)
    shape = (int(np.ceil(side / FIELD_UM)),) * 2
    label_map = np.argmax(_smooth_fields(rng, len(niches), shape, REGION_SCALE_UM / FIELD_UM), axis=0)
    angle_map = np.pi * _smooth_fields(rng, 1, shape, 30 / FIELD_UM)[0]

    gx, gy = np.meshgrid(np.arange(0, side, GRID_UM), np.arange(0, side, GRID_UM))
    xy = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.3, 0.3, (gx.size, 2)) * GRID_UM
    xy = np.clip(xy, 0, side - 1e-6)
    niche = label_map[(xy[:, 1] // FIELD_UM).astype(int), (xy[:, 0] // FIELD_UM).astype(int)]
    keep = rng.random(len(xy)) < density[niche]
    xy, niche = xy[keep], niche[keep]
    if len(xy) < n_cells:  # density draw fell short: top up from the densest-kept candidates
        raise RuntimeError(f"demo layout produced {len(xy)} < {n_cells} cells; raise the side margin")
    cell_type = np.empty(len(xy), dtype=object)
    for j, n in enumerate(niches):
        members = np.flatnonzero(niche == j)
        names, p = zip(*n.mixture.items())
        cell_type[members] = rng.choice(names, size=len(members), p=np.array(p) / sum(p))
    cells = pd.DataFrame(
        {
            "x_um": xy[:, 0],
            "y_um": xy[:, 1],
            "niche": [niches[j].name for j in niche],
            "region": [niches[j].region for j in niche],
            "cell_type": cell_type.astype(str),
        }
    )
    return Layout(tissue, side, label_map, angle_map, cells)


@dataclass
class Panel:
    genes: list[str]
    controls: list[tuple[str, str]]  # (name, 10x feature_type)
    log_rates: dict[str, np.ndarray]  # cell type -> log expression program
    region_genes: dict[str, np.ndarray]  # region -> mask of context-responsive genes


def make_panel(rng: np.random.Generator, markers_per_type: int = 14, housekeeping: int = 40) -> Panel:
    types = sorted(CELL_TYPES)
    regions = ["tumor", "stroma", "immune", "normal"]
    genes = [f"HK{i:02d}" for i in range(housekeeping)]
    genes += [f"{t.upper()[:5]}_M{i:02d}" for t in types for i in range(markers_per_type)]
    genes += [f"{r.upper()}_CTX{i:02d}" for r in regions for i in range(8)]
    base = rng.normal(0.0, 0.35, len(genes)) - 1.5
    base[:housekeeping] += 1.8
    log_rates = {}
    for t in types:
        program = base + rng.normal(0, 0.3, len(genes))
        program[[g.startswith(f"{t.upper()[:5]}_M") for g in genes]] += 3.2
        log_rates[t] = program
    region_genes = {r: np.array([g.startswith(f"{r.upper()}_CTX") for g in genes]) for r in regions}
    controls = [(f"NegControlProbe_{i:05d}", "Negative Control Probe") for i in range(12)]
    controls += [(f"NegControlCodeword_{i:04d}", "Negative Control Codeword") for i in range(6)]
    controls += [(f"UnassignedCodeword_{i:04d}", "Unassigned Codeword") for i in range(6)]
    return Panel(genes, controls, log_rates, region_genes)


def sample_counts(cells: pd.DataFrame, panel: Panel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial gene counts (cells x genes) and sparse control counts (cells x controls)."""
    logits = np.stack([panel.log_rates[t] for t in cells["cell_type"]])
    for region, mask in panel.region_genes.items():
        logits[np.ix_(cells["region"].to_numpy() == region, mask)] += 1.8
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(180), 0.35, len(cells))
    mean = p * library[:, None]
    theta = 6.0  # NB dispersion: gamma-Poisson mixture
    genes = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.int32)
    controls = rng.poisson(0.02, (len(cells), len(panel.controls))).astype(np.int32)
    return genes, controls
