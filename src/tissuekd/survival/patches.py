"""Per-slide steps of the survival study: the patch grid (with a thumbnail showing it) and the
patch features, both as HDF5 in TRIDENT's layout (tissuekd.survival.layout).

Patch files hold `coords` (n, 2) int64 level-0 top-left corners with TRIDENT's attributes
(`patch_size` at the target magnification, `patch_size_level0`, `level0_magnification`,
`target_magnification`, `overlap`, `name`, `savetodir`, `level0_width`, `level0_height`) plus
our `target_mpp` and `level0_mpp`, and `tissue_fraction` (n,). Feature files add `features`
(n, dim) float32 and the encoder's name, so files written by TRIDENT or CLAM (`features` +
`coords`) can be named in the slide sheet's `features` column instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from tissuekd.errors import InputError
from tissuekd.io.atomic import atomic_path
from tissuekd.io.wsi import check_pixel_size, open_slide
from tissuekd.survival.layout import coords_attrs, patch_geometry, slide_name, trident_coords_attrs
from tissuekd.survival.tissue import Grid, grid_for_slide

log = logging.getLogger(__name__)


def grid_attrs(grid: Grid, *, level0_size: tuple[int, int], name: str, savetodir: str) -> dict:
    """`coords` attributes of a patch file: TRIDENT's (tissuekd.survival.layout), with the
    magnifications as 10 / mpp (the level-0 one from the slide's mpp, or from its objective power
    or the sheet's mpp when the file has no mpp: see tissue.slide_mpp), and our exact mpp."""
    trident = trident_coords_attrs(patch_size=grid.patch_px, patch_size_level0=grid.patch_level0,
                                   level0_mpp=grid.slide_mpp, target_mpp=grid.target_mpp, level0_size=level0_size,
                                   name=name, savetodir=savetodir, overlap=0)  # the grid does not overlap
    return {**trident, "target_mpp": grid.target_mpp, "level0_mpp": grid.slide_mpp}


def make_patches(image: str, out_h5: str, out_thumbnail: str, *, magnification: float = 20, patch_px: int = 256,
                 min_tissue: float = 0.5, mpp: float | None = None, backend: str = "auto") -> None:
    """Tissue mask + patch grid of one slide -> `out_h5`; the thumbnail with both drawn -> `out_thumbnail`.
    A slide without tissue gets an empty grid and a warning (the cohort step drops it, naming it).

    Parameters
    ----------
    image : str
        The whole-slide image.
    out_h5 : str
        Patch file written: `coords` (n, 2) int64 top-left corners in level-0 px with TRIDENT's attributes
        plus `target_mpp` and `level0_mpp`, and `tissue_fraction` (n,).
    out_thumbnail : str
        Thumbnail written, the tissue mask and each kept patch outlined.
    magnification : float, default 20
        Magnification the patches are taken at; µm/px = 10 / magnification (20: 0.5 µm/px).
    patch_px : int, default 256
        Patch side in pixels at that magnification (256 px at 20x: 128 µm).
    min_tissue : float, default 0.5
        Share of a patch's footprint on the tissue mask (0 to 1) needed to keep it.
    mpp : float or None
        The slide's µm per level-0 pixel (the slide sheet's `mpp`), overriding the file's; None: the file's mpp,
        else 10 / its objective power.
    backend : str, default "auto"
        Slide reader: "auto" (tifffile for OME-TIFF, OpenSlide otherwise), "openslide" or "tifffile".
    """
    if mpp is not None:
        check_pixel_size(mpp, image, "the slide sheet's mpp")
    with open_slide(image, backend) as slide:
        grid, thumb, mask, downsample = grid_for_slide(slide, magnification, patch_px, min_tissue, mpp)
        level0_size = slide.dimensions
    if len(grid.coords) == 0:
        log.warning("%s: no tissue found (no patch has %.0f%% tissue); the slide gets no patches",
                    image, 100 * min_tissue)
    log.info("%s: %d patches of %d px at %gx (%d px at level 0, %.3g µm/px); tissue %.0f%% of the thumbnail",
             image, len(grid.coords), patch_px, magnification, grid.patch_level0, grid.slide_mpp, 100 * mask.mean())
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("coords", data=grid.coords)
        h5.create_dataset("tissue_fraction", data=grid.tissue_fraction)
        h5["coords"].attrs.update(grid_attrs(grid, level0_size=level0_size, name=slide_name(image),
                                             savetodir=str(Path(out_h5).parent)))
    with atomic_path(out_thumbnail) as tmp:
        draw_grid(thumb, mask, grid, downsample).save(tmp, format="JPEG", quality=85)


DRAWN_PX = 1024  # longest side of the drawn thumbnail (a JPEG of ~100-200 KB: the report holds one per slide)
MASK_EDGE = (0, 190, 60)  # the tissue mask's outline on it


def draw_grid(thumb: np.ndarray, mask: np.ndarray, grid: Grid, downsample: float) -> Image.Image:
    """The thumbnail, at most DRAWN_PX on its longest side, with the tissue mask outlined in green
    (a tint mixed with H&E's pink reads as grey) and each kept patch outlined in black."""
    image = Image.fromarray(thumb)
    shrink = max(1.0, max(image.size) / DRAWN_PX)
    if shrink > 1:
        image = image.resize((round(image.width / shrink), round(image.height / shrink)), Image.Resampling.BOX)
    small = np.asarray(Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST))
    rgb = np.array(image)
    rgb[find_boundaries(small, mode="thick")] = MASK_EDGE
    image = Image.fromarray(rgb)
    pen = ImageDraw.Draw(image)
    downsample *= shrink
    side = grid.patch_level0 / downsample
    for x, y in grid.coords / downsample:
        pen.rectangle([x, y, x + side, y + side], outline=(20, 20, 20))
    return image


def read_patches(path: str) -> tuple[np.ndarray, dict]:
    """Coordinates and `coords` attributes of a patch file, ours or TRIDENT's; the attributes are
    completed by layout.patch_geometry (e.g. TRIDENT's magnifications give `level0_mpp` and
    `target_mpp`). A file without `coords` (n, 2) or its geometry is an InputError naming it."""
    try:
        with h5py.File(path, "r") as h5:
            if "coords" not in h5:
                raise InputError(path, f"a patch file needs a `coords` dataset; has {list(h5)}")
            coords, attrs = h5["coords"][:], coords_attrs(h5)
    except OSError as err:
        raise InputError(path, f"not a readable HDF5 file: {err}") from None
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(path, f"`coords` has shape {coords.shape}, expected (n, 2)")
    return coords, patch_geometry(attrs, path)


def extract_patch_features(patches: str, image: str, spec, out: str, *, crop_px: int = 224, batch_size: int = 64,
                           device: str = "auto", precision: str = "auto", threads: int | None = None,
                           backend: str = "auto", progress: bool = True, reuse_encoder: bool = False) -> None:
    """Each patch through the frozen encoder at the encoder's input size; -> `features`, `coords`.

    Parameters
    ----------
    patches : str
        Patch file (make_patches, or TRIDENT's): `coords`, level-0 top-left corners, and their geometry.
    image : str
        The whole-slide image the patches were cut from.
    spec : EncoderSpec
        The encoder. Its `mpp` is not used here: the whole patch is resampled to `crop_px`.
    out : str
        Features file written (rule survival_features): `features` (n, dim) float32 and `coords` as in the patch
        file, with its attributes plus `encoder`, `arch` and `precision`.
    crop_px : int, default 224
        Side the whole patch is resampled to (encoder input, px): patch_size * target_mpp / crop_px µm/px
        (256 px at 0.5 µm/px -> 224 px at ~0.57 µm/px).
    batch_size : int, default 64
        Patches per encoder batch.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    precision : str, default "auto"
        "auto", "fp32", "bf16" or "fp16" (tissuekd.compute).
    threads : int or None
        Cap on torch's intra-op threads (None: torch's default).
    backend : str, default "auto"
        Slide reader: "auto" (tifffile for OME-TIFF, OpenSlide otherwise), "openslide" or "tifffile".
    progress : bool, default True
        Show a progress bar.
    reuse_encoder : bool, default False
        Build the encoder once per process and reuse it (registry.cached_encoder), for jobs run inside one
        long-lived process; False builds it afresh.
    """
    from tissuekd import compute
    from tissuekd.encoders.extract import Encoder, write_features
    from tissuekd.encoders.registry import build_encoder, cached_encoder
    from tissuekd.spatial.crops import CropBatches, CropGeometry, crop_loader, default_workers

    run = compute.resolve(device, precision, threads)
    coords, attrs = read_patches(patches)
    dev = run.device
    encoder = Encoder((cached_encoder if reuse_encoder else build_encoder)(spec), spec, run)
    # the encoder sees the whole patch, resampled to its input size
    crop_mpp = attrs["patch_size"] * attrs["target_mpp"] / crop_px
    with open_slide(image, backend) as slide:
        geometry = CropGeometry.for_slide(slide, attrs["level0_mpp"], crop_mpp, crop_px)
    log.info("%s: %d patches -> %d px crops from level %d, %s on %s", image, len(coords), crop_px,
             geometry.level, spec.arch, dev)
    centers = coords + attrs["patch_size_level0"] / 2
    batches = crop_loader(CropBatches(image, backend, centers, geometry, batch_size), default_workers(dev))
    write_features(out, batches, encoder, coords, {**attrs, "encoder": spec.name, "arch": spec.arch,
                                                          "precision": run.precision}, progress)
