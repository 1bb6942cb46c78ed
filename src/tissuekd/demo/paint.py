"""Render a synthetic H&E from a demo layout, in stain optical-density space.

Each cell gets a nucleus (hematoxylin; size, shape, density, chromatin texture and a
vesicular rim by type) and cytoplasm (eosin); the tissue background's eosin depends on
the niche's region (stroma is fibrous and pinker). RGB = 255 * exp(-OD).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tissuekd.demo.layout import FIELD_UM, Layout
from tissuekd.demo.tissues import CELL_TYPES, TISSUES

HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
REGION_EOSIN = {"tumor": 0.18, "stroma": 0.42, "immune": 0.12, "normal": 0.25}
SPINDLE = {"fibroblast", "smooth_muscle", "endothelial"}


def _ellipse_distance(half: int, a: float, b: float, theta: float) -> np.ndarray:
    v, u = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    c, s = np.cos(theta), np.sin(theta)
    return np.sqrt(((u * c + v * s) / a) ** 2 + ((-u * s + v * c) / b) ** 2)


def _stamp(canvas: np.ndarray, x: float, y: float, patch: np.ndarray, op) -> None:
    half = patch.shape[0] // 2
    cx, cy = int(round(x)), int(round(y))
    ys, xs = slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1)
    canvas[ys, xs] = op(canvas[ys, xs], patch)


def paint_he(layout: Layout, he_xy: np.ndarray, he_angle: float, shape: tuple[int, int], mpp: float,
             um_of_pixel, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image of `shape` (rows, cols); cells drawn at `he_xy` (H&E pixels).

    Parameters
    ----------
    layout : Layout
        The demo slide's cells (`x_um`, `y_um`, `cell_type`) and its niche and orientation maps (µm).
    he_xy : np.ndarray
        (cells, 2) each cell's position (x, y) on the H&E, level-0 px, in `layout.cells` order.
    he_angle : float
        Rotation of the H&E -> morphology alignment, radians; spindle cells' orientations are turned by it.
    shape : tuple of int
        (rows, cols) of the image, px.
    mpp : float
        µm per H&E pixel; cell and nucleus sizes (µm) are divided by it.
    um_of_pixel : callable
        Maps (n, 2) H&E pixel positions (x, y) to Xenium µm (for the background's regions).
    rng : np.random.Generator
        Source of every random draw.
    """
    hema = np.zeros(shape, np.float32)
    eosin = _background_eosin(layout, shape, um_of_pixel, rng)
    cells = layout.cells
    angle_at = layout.angle_map[(cells.y_um // FIELD_UM).astype(int), (cells.x_um // FIELD_UM).astype(int)]
    for (x, y), name, angle in zip(he_xy, cells["cell_type"], angle_at):
        t = CELL_TYPES[name]
        scale = rng.uniform(0.85, 1.15)
        a = t.radius_um * scale / mpp
        b = a * t.aspect
        theta = (angle if name in SPINDLE else rng.uniform(0, np.pi)) - he_angle
        cyto_half = int(np.ceil(t.cyto_um * scale / mpp)) + 2
        cyto_px = t.cyto_um * scale / mpp
        d_cyto = _ellipse_distance(cyto_half, cyto_px, cyto_px * max(t.aspect, 0.6), theta)
        _stamp(eosin, x, y, t.eosin * np.clip(1.3 - d_cyto, 0, 1) ** 0.5, np.maximum)
        half = int(np.ceil(a)) + 2
        d = _ellipse_distance(half, a, b, theta)
        body = 1.0 / (1.0 + np.exp((d - 1.0) * a * 1.2))  # soft edge ~1 px wide
        grain = ndimage.gaussian_filter(rng.standard_normal(d.shape).astype(np.float32), 0.8)
        grain /= grain.std() + 1e-6
        density = t.hema * (1.0 - t.rim * 0.55 * np.clip(1.0 - d, 0, 1)) * (1.0 + t.texture * grain)
        if t.rim > 0.4:  # prominent nucleolus
            density += 0.9 * np.exp(-(d / 0.18) ** 2)
        _stamp(hema, x, y, np.clip(density, 0, None) * body, np.maximum)
    rgb = np.empty((*shape, 3), np.uint8)
    for ch in range(3):  # one channel at a time, float32: a large demo slide stays within a few GB
        od = hema * np.float32(HEMATOXYLIN[ch]) + eosin * np.float32(EOSIN[ch]) + np.float32(0.03)
        plane = ndimage.gaussian_filter(np.float32(255.0) * np.exp(-od), sigma=0.6)
        plane += rng.standard_normal(shape, dtype=np.float32) * np.float32(3.0)
        rgb[..., ch] = plane.clip(0, 255)
    return rgb


def _background_eosin(layout: Layout, shape, um_of_pixel, rng) -> np.ndarray:
    """Eosin of the tissue between cells, looked up on a coarse grid then upsampled."""
    step = 8
    rows, cols = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    um = um_of_pixel(np.c_[cols.ravel(), rows.ravel()].astype(float))
    inside = (um >= 0).all(axis=1) & (um < layout.side_um).all(axis=1)
    regions = np.array([REGION_EOSIN[n.region] for n in TISSUES[layout.tissue]])
    field = np.zeros(len(um), np.float32)
    idx = np.clip((um[inside] // FIELD_UM).astype(int), 0, layout.label_map.shape[0] - 1)
    field[inside] = regions[layout.label_map[idx[:, 1], idx[:, 0]]]
    coarse = ndimage.gaussian_filter(field.reshape(rows.shape), 1.0)
    full = np.kron(coarse, np.ones((step, step), np.float32))[: shape[0], : shape[1]]
    fibres = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (1.0, 6.0))
    return np.clip(full * (1.0 + 1.5 * fibres), 0, None)
