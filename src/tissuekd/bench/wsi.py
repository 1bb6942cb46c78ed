"""Whole-slide scale of the survival study's per-slide steps: a synthetic pyramidal SVS written
tile by tile (never whole in memory) at two or more sizes, then `survival_patches` (tissue mask,
patch grid) and `survival_features` (every patch through the demo encoder) on each, each step in
a fresh process, printing wall time, peak RSS and their growth.

    python -m tissuekd.bench.wsi [--sizes 20000x15000 80000x60000] [--mpp 0.25]

80,000 x 60,000 px at 0.25 µm/px (40x) is a large TCGA slide. Bounded memory is a memory ratio
near 1 while the patches grow many times; near-linear time is a per-patch ratio near 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from tissuekd.bench.scale import measured

TILE = 512
MASK_PX = 1024  # level-0 px per cell of the coarse tissue map
TISSUE = np.array([232, 168, 212], np.uint8)
NUCLEUS = np.array([88, 60, 148], np.uint8)
GLASS = np.array([244, 244, 244], np.uint8)


def tissue_map(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Coarse boolean map of tissue (about half the slide, in blobs), one cell per MASK_PX level-0 px."""
    shape = (-(-height // MASK_PX), -(-width // MASK_PX))
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 3, mode="wrap")
    return field > np.median(field)


def tiles(tissue: np.ndarray, width: int, height: int, ds: int) -> Iterator[np.ndarray]:
    """The level at downsample `ds` as (TILE, TILE, 3) tiles, row-major: tissue pink with
    hematoxylin dots, glass elsewhere, each tile seeded by its place."""
    lw, lh = width // ds, height // ds
    for ty in range(0, lh, TILE):
        rows = np.minimum((ty + np.arange(TILE)) * ds // MASK_PX, tissue.shape[0] - 1)
        for tx in range(0, lw, TILE):
            cols = np.minimum((tx + np.arange(TILE)) * ds // MASK_PX, tissue.shape[1] - 1)
            inside = tissue[np.ix_(rows, cols)]
            rng = np.random.default_rng([ds, ty, tx])
            tile = np.where(inside[..., None], TISSUE, GLASS)
            dots = inside & (rng.random((TILE, TILE)) < 0.03)
            tile[dots] = NUCLEUS
            yield tile


def write_slide(path: Path, width: int, height: int, mpp: float) -> None:
    """A pyramidal Aperio SVS of `width` x `height` px at `mpp`, levels 1/4/16/64, tile by tile."""
    from tissuekd.demo.survival import write_svs_levels

    tissue = tissue_map(width, height)
    write_svs_levels(path, (width, height), lambda ds: tiles(tissue, width, height, ds), mpp, round(10 / mpp),
                     (1, 4, 16, 64), tile=TILE)


def patches_step(image: str, folder: str) -> None:
    from tissuekd.survival.patches import make_patches

    make_patches(image, f"{folder}/patches.h5", f"{folder}/thumbnail.png")


def features_step(image: str, folder: str) -> None:
    from tissuekd.bench.features import DEMO_ENCODER
    from tissuekd.survival.patches import extract_patch_features

    extract_patch_features(f"{folder}/patches.h5", image, DEMO_ENCODER, f"{folder}/features.h5", device="cpu",
                           progress=False)


def patch_count(folder: Path) -> int:
    import h5py

    with h5py.File(folder / "patches.h5") as h5:
        return len(h5["coords"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_wsi"))
    parser.add_argument("--sizes", nargs="+", default=["20000x15000", "80000x60000"], help="WIDTHxHEIGHT, level-0 px")
    parser.add_argument("--mpp", type=float, default=0.25)
    args = parser.parse_args(argv)
    rows: dict[str, list[tuple[float, float]]] = {"patches": [], "features": []}
    counts = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        folder = args.workdir / size
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / "slide.svs"
        if not image.exists():
            seconds, mb = measured(f"write_slide(Path({str(image)!r}), {width}, {height}, {args.mpp})",
                                   module="tissuekd.bench.wsi")
            print(f"    {size}: slide written in {seconds:.0f} s, {mb:.0f} MB peak "
                  f"({image.stat().st_size / 1e9:.2f} GB on disk)", flush=True)
        for step in rows:
            rows[step].append(measured(f"{step}_step({str(image)!r}, {str(folder)!r})", module="tissuekd.bench.wsi"))
        counts.append(patch_count(folder))
        print(f"    {size}: {counts[-1]:,d} patches; " + ", ".join(
            f"{step} {values[-1][0]:.1f} s, {values[-1][1]:.0f} MB" for step, values in rows.items()), flush=True)
    print(f"survival slide steps at {args.mpp} µm/px (patches of 256 px at 20x, demo encoder on the CPU):")
    for step, values in rows.items():
        (s0, m0), (s1, m1) = values[0], values[-1]
        per = (s1 / counts[-1]) / (s0 / counts[0])
        cells = "".join(f"{sec:8.1f} s {mb:6.0f} MB   " for sec, mb in values)
        print(f"    {step:9s} {cells} x{counts[-1] / counts[0]:.1f} patches: {per:5.2f}x time per patch, "
              f"{m1 / m0:5.2f}x memory")


if __name__ == "__main__":
    main()
