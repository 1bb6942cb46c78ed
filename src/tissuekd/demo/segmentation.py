"""Synthetic segmentation data in the published layouts: TissueNet v1.1 npz splits and a
BBBC038 folder.

A TissueNet tile has nuclei (ellipses, some touching), the cells around them (each nucleus
grown by its own distance, stopping where it meets a neighbour) and two channels: nuclear
(the nuclei, per-nucleus brightness, texture, noise) and membrane (the cells' outlines). Where
two cells meet, the border is half-way between their nuclei, which the nuclear channel shows;
how far a cell reaches into free space is drawn per cell and only the membrane shows it: the
information a multiplexed teacher has and a nuclear-only student must learn from it. Two
tissues (dense small nuclei, sparse large ones) and two platforms (bright and clean, dim and
noisy). The BBBC038 folder has nuclei of other sizes and brightness, grey and RGB images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse
from skimage.segmentation import expand_labels, find_boundaries, relabel_sequential

from tissuekd.io.atomic import atomic_path

TISSUES = {"breast": {"density": 1.6, "radius": (3.0, 5.0)}, "colon": {"density": 0.9, "radius": (4.0, 6.5)}}
PLATFORMS = {"codex": {"gain": 1.0, "noise": 0.05}, "mibi": {"gain": 0.6, "noise": 0.12}}
GROWTH = (2, 7)  # px a cell reaches beyond its nucleus into free space, drawn per cell


def nuclei(size: int, tissue: str, rng: np.random.Generator) -> np.ndarray:
    """Instance labels of nuclei: ellipses at Poisson positions; a later one overlapping an
    earlier one takes the pixels it covers (touching nuclei)."""
    spec = TISSUES[tissue]
    n = rng.poisson(spec["density"] * (size / 32) ** 2)
    labels = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        r = rng.uniform(*spec["radius"])
        rows, cols = ellipse(rng.uniform(0, size), rng.uniform(0, size), r, r * rng.uniform(0.6, 1.0),
                             shape=labels.shape, rotation=rng.uniform(0, np.pi))
        labels[rows, cols] = k
    return relabel_sequential(labels)[0]  # ids 1..n: nuclei fully covered by later ones drop out


def cells(nuclear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-cell labels: each nucleus grown by its own distance (GROWTH), never into another cell."""
    ids = np.arange(nuclear.max() + 1)
    reach = rng.integers(*GROWTH, size=len(ids))
    grown = expand_labels(nuclear, distance=GROWTH[1])
    distance = ndimage.distance_transform_edt(nuclear == 0)
    return np.where(distance <= reach[grown], grown, 0).astype(np.int32)


def channels(nuclear: np.ndarray, whole: np.ndarray, platform: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 2) float32: nuclear and membrane intensities of one tile."""
    spec = PLATFORMS[platform]
    brightness = rng.uniform(0.5, 1.0, nuclear.max() + 1)
    brightness[0] = 0
    texture = 1 + 0.2 * ndimage.gaussian_filter(rng.standard_normal(nuclear.shape), 1)
    nuc = ndimage.gaussian_filter(brightness[nuclear] * texture, 0.8)
    mem = ndimage.gaussian_filter(find_boundaries(whole, mode="inner").astype(float), 0.7) * 1.5
    both = np.stack([nuc, mem], axis=-1) * spec["gain"] + rng.normal(0, spec["noise"], (*nuclear.shape, 2))
    return np.clip(both, 0, None).astype(np.float32)


def tile(size: int, tissue: str, platform: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One tile: X (H, W, 2) and y (H, W, 2) whole-cell and nuclear labels, as TissueNet."""
    nuclear = nuclei(size, tissue, rng)
    whole = cells(nuclear, rng)
    return channels(nuclear, whole, platform, rng), np.stack([whole, nuclear], axis=-1)


def write_tissuenet(path: str | Path, n_images: int, size: int = 128, seed: int = 0) -> Path:
    """A TissueNet v1.1 split (uncompressed npz, as published): X, y, tissue_list, platform_list;
    tissues and platforms alternate so every split has both of each."""
    rng = np.random.default_rng([seed, n_images, size])
    pairs = [(t, p) for t in TISSUES for p in PLATFORMS]
    tiles = [tile(size, *pairs[i % len(pairs)], rng) for i in range(n_images)]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, X=np.stack([t[0] for t in tiles]), y=np.stack([t[1] for t in tiles]),
                     tissue_list=np.array([pairs[i % len(pairs)][0] for i in range(n_images)]),
                     platform_list=np.array([pairs[i % len(pairs)][1] for i in range(n_images)]))
    return Path(path)


def write_bbbc038(folder: str | Path, n_images: int = 6, seed: int = 0) -> Path:
    """A BBBC038 folder: `<id>/images/<id>.png` (8-bit, grey or RGB) and one binary
    `<id>/masks/<k>.png` per nucleus; nuclei larger or smaller and dimmer than TissueNet's."""
    folder = Path(folder)
    rng = np.random.default_rng([seed, n_images, 38])
    for i in range(n_images):
        size = int(rng.choice([96, 128, 160]))
        labels = nuclei(size, "colon" if i % 2 else "breast", rng)
        scale = (0.6, 1.6)[i % 2]  # other nucleus sizes than TissueNet's
        labels = ndimage.zoom(labels, scale, order=0)[:size, :size] if scale > 1 else _shrink(labels, scale)
        labels = relabel_sequential(labels)[0]
        brightness = rng.uniform(0.3, 0.9, labels.max() + 1)
        brightness[0] = 0
        grey = ndimage.gaussian_filter(brightness[labels], 0.8) + rng.normal(0, 0.04, labels.shape)
        pixels = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
        image = np.stack([pixels] * 3, -1) if i % 3 == 0 else pixels  # some RGB, as in the release
        name = f"demo{i:02d}"
        (folder / name / "images").mkdir(parents=True, exist_ok=True)
        (folder / name / "masks").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / name / "images" / f"{name}.png")
        for k in range(1, labels.max() + 1):
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(folder / name / "masks" / f"{k:03d}.png")
    return folder


def _shrink(labels: np.ndarray, scale: float) -> np.ndarray:
    """Each nucleus eroded toward its centre (smaller nuclei at the same tile size)."""
    out = np.zeros_like(labels)
    distance = ndimage.distance_transform_edt(labels > 0)
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        own = labels[region] == k
        keep = own & (distance[region] > (1 - scale) * distance[region][own].max())
        out[region][keep] = k
    return out

