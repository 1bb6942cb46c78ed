"""Benchmark the niche features step on a demo slide; prints ratios measured in one run.

(a) crops/s of the block crop reader vs one OpenSlide `read_region` per cell, same cells;
(b) the encoder alone at fp32 and at bf16 on this CPU, and the precision `auto` picks;
(c) end-to-end extraction throughput / the encoder alone, at that precision, for the demo
    encoder and a ViT-S (the compute class of pathology encoders);
(d) peak memory of the features step at two slide sizes (streaming: should not grow).

    python -m tissuekd.bench.features [--workdir results/bench_work] [--cells 1000] [--skip-memory]

Every timing is bounded (seconds, not whole slides), so it finishes in a few minutes even where
bf16 is emulated and slow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tissuekd.compute import Compute, resolve
from tissuekd.demo.xenium import make_demo_slide
from tissuekd.encoders.extract import Encoder, write_features
from tissuekd.encoders.registry import EncoderSpec, build_encoder
from tissuekd.io.columns import CELL_ID, XY_HE
from tissuekd.io.wsi import open_slide
from tissuekd.niche.ingest import ingest_slide
from tissuekd.spatial.crops import CropBatches, CropGeometry, crop_loader, default_workers, iter_crop_batches

DEMO_ENCODER = EncoderSpec(name="demo-mobilenet", arch="mobilenetv3_small_100", mpp=0.5, weights="random")


def prepare(workdir: Path, tissue: str, n_cells: int) -> dict:
    """A demo slide and its ingested cell table (cached in workdir)."""
    slide_dir = workdir / f"{tissue}_{n_cells}"
    paths = {"cells": slide_dir / "cells.parquet", "slide": slide_dir / "slide.json",
             "he": slide_dir / f"{slide_dir.name}_he_image.ome.tif"}
    if not paths["cells"].exists():
        bundle = make_demo_slide(slide_dir, tissue, n_cells=n_cells)
        ingest_slide(str(bundle), str(paths["he"]), str(slide_dir / f"{slide_dir.name}_he_imagealignment.csv"),
                     str(paths["cells"]), str(slide_dir / "expression.h5ad"), str(paths["slide"]))
    return paths


def crops_per_second(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def bench_reader(paths: dict, n: int, crop_px: int = 224) -> None:
    cells = pd.read_parquet(paths["cells"]).sample(n, random_state=0)
    centers = cells[XY_HE].to_numpy()
    he_mpp = json.loads(paths["slide"].read_text())["he_mpp"]
    rates = {}
    for backend in ("tifffile", "openslide"):
        with open_slide(paths["he"], backend) as slide:
            geom = CropGeometry.for_slide(slide, he_mpp, DEMO_ENCODER.mpp, crop_px)
            rates[backend] = crops_per_second(lambda s=slide, g=geom: sum(1 for _ in iter_crop_batches(s, centers, g)),
                                              n)
    import openslide
    from PIL import Image

    with openslide.OpenSlide(str(paths["he"])) as slide:  # the naive loop a user would write
        side = round(crop_px * DEMO_ENCODER.mpp / he_mpp)

        def per_cell():
            for x, y in centers:
                region = slide.read_region((int(x - side / 2), int(y - side / 2)), 0, (side, side))
                np.asarray(region.convert("RGB").resize((crop_px, crop_px), Image.BILINEAR))

        baseline = crops_per_second(per_cell, n)
    print(f"(a) crop reader, {n} cells, {crop_px}-px crops at {DEMO_ENCODER.mpp} um/px:")
    print(f"    one OpenSlide read_region per cell: {baseline:8.0f} crops/s")
    for backend, rate in rates.items():
        print(f"    block reads ({backend:9s}):         {rate:8.0f} crops/s  = {rate / baseline:5.1f}x")


def encoder_rate(encoder: Encoder, batches: list[torch.Tensor], seconds: float) -> float:
    """Crops/s of the encoder alone on preloaded batches, for about `seconds` (one batch at least)."""
    encoder(batches[0][:2])  # warm-up
    done, start = 0, time.perf_counter()
    for batch in itertools.cycle(batches):
        encoder(batch)
        done += len(batch)
        if time.perf_counter() - start >= seconds:
            return done / (time.perf_counter() - start)
    raise AssertionError("unreachable")


def bench_precision(paths: dict, spec: EncoderSpec, seconds: float = 5.0) -> Compute:
    """(b) the encoder alone at fp32 and bf16 on this machine, and what `auto` picks."""
    batches = _preloaded(paths, spec, 256)
    model = build_encoder(spec)
    rates = {p: encoder_rate(Encoder(model, spec, Compute(torch.device("cpu"), p)), batches, seconds)
             for p in ("fp32", "bf16")}
    chosen = resolve("cpu", "auto")
    print(f"(b) {spec.arch} alone on the CPU, {torch.get_num_threads()} threads, batches of {len(batches[0])}:")
    for p, rate in rates.items():
        print(f"    {p}: {rate:7.1f} crops/s" + ("  <- auto" if p == chosen.precision else ""))
    print(f"    bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}; auto picked {chosen.precision} ({chosen.reason})")
    return chosen


def _preloaded(paths: dict, spec: EncoderSpec, n: int, batch_size: int = 64) -> list[torch.Tensor]:
    cells = pd.read_parquet(paths["cells"]).sample(n, random_state=1).sort_index()
    he_mpp = json.loads(paths["slide"].read_text())["he_mpp"]
    with open_slide(paths["he"]) as slide:
        geom = CropGeometry.for_slide(slide, he_mpp, spec.mpp, 224)
        return [b for _, b in iter_crop_batches(slide, cells[XY_HE].to_numpy(), geom, batch_size)]


def bench_pipeline(paths: dict, n: int, spec: EncoderSpec, run: Compute, batch_size: int = 64,
                   repeats: int = 3) -> None:
    """(c) end-to-end extraction (read, crop, encode, write) / the encoder alone, at `run`'s precision,
    with the crop reader in this process and in the worker count the step would use.

    Parameters
    ----------
    paths : dict
        The demo slide's "cells", "slide" and "he" paths (prepare).
    n : int
        Cells timed (a seeded sample).
    spec : EncoderSpec
        The encoder timed.
    run : Compute
        Device and precision.
    batch_size : int, default 64
        Crops per batch.
    repeats : int, default 3
        Alternating runs of the encoder alone and end to end, per worker count.
    """
    cells = pd.read_parquet(paths["cells"]).sample(n, random_state=1).sort_index()
    centers = cells[XY_HE].to_numpy()
    he_mpp = json.loads(paths["slide"].read_text())["he_mpp"]
    encoder = Encoder(build_encoder(spec), spec, run)
    with open_slide(paths["he"]) as slide:
        geom = CropGeometry.for_slide(slide, he_mpp, spec.mpp, 224)
        batches = [b for _, b in iter_crop_batches(slide, centers, geom, batch_size)]
    encoder(batches[0])  # warm-up
    print(f"(c) feature extraction, {n} cells, {spec.arch} on {run.device} at {run.precision}, "
          f"{torch.get_num_threads()} threads, {repeats} alternating runs:")
    for workers in sorted({0, default_workers(run.device)}):
        with tempfile.TemporaryDirectory() as tmp:
            def end_to_end(workers=workers, tmp=tmp):
                loader = crop_loader(CropBatches(paths["he"], "auto", centers, geom, batch_size), workers)
                write_features(Path(tmp) / "f.h5", loader, encoder, centers, {}, progress=False,
                               extra={CELL_ID: cells[CELL_ID].to_numpy()})

            # alternate the two, several times: throughput on a shared VM drifts between runs
            pairs = [(crops_per_second(lambda: [encoder(b) for b in batches], n), crops_per_second(end_to_end, n))
                     for _ in range(repeats)]
        ratios = sorted(full / alone for alone, full in pairs)
        alone, full = (float(np.median(v)) for v in zip(*pairs))
        print(f"    {workers} reader worker(s): encoder alone {alone:7.1f} crops/s, end to end {full:7.1f} crops/s, "
              f"ratio median {np.median(ratios):.2f} (runs {ratios[0]:.2f} .. {ratios[-1]:.2f})"
              + ("  <- the step's choice" if workers == default_workers(run.device) else ""))


def peak_memory_mb(paths: dict) -> tuple[float, int]:
    """Run the features step in a fresh process; return its peak RSS (MB) and cell count.

    Peak = the process's VmHWM plus its crop-reader worker's (ru_maxrss would carry the
    parent's peak over the exec, on Linux).
    """
    code = (
        "import sys; from tissuekd.niche.features import extract_cell_features;"
        "from tissuekd.bench.features import DEMO_ENCODER as E, vm_hwm_kb; a=sys.argv[1:];"
        "extract_cell_features(a[0], a[1], a[2], E, a[3], progress=False); print(vm_hwm_kb())"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, str(paths["cells"]), str(paths["slide"]), str(paths["he"]),
                              f"{tmp}/f.h5"], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024, len(pd.read_parquet(paths["cells"], columns=[CELL_ID]))


def vm_hwm_kb() -> int:
    """Peak resident memory of this process (kB), from /proc (reset at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_work"))
    parser.add_argument("--cells", type=int, default=1000, help="cells timed in (a) and (c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per precision in (b)")
    parser.add_argument("--large-cells", type=int, default=12000, help="cells of the larger slide in (d)")
    parser.add_argument("--skip-memory", action="store_true", help="skip (d), which generates a large slide")
    args = parser.parse_args(argv)
    small = prepare(args.workdir, "breast", 3000)
    bench_reader(small, args.cells)
    run = bench_precision(small, DEMO_ENCODER, args.seconds)
    bench_pipeline(small, args.cells, DEMO_ENCODER, run)
    # a ViT-S: the compute class of real pathology encoders, where reading is a small share
    vit = EncoderSpec(name="vit-s", arch="vit_small_patch16_224", mpp=0.5, weights="random")
    bench_pipeline(small, max(64, args.cells // 8), vit, run, repeats=2)
    if args.skip_memory:
        return
    large = prepare(args.workdir, "breast", args.large_cells)
    (mem_s, n_s), (mem_l, n_l) = peak_memory_mb(small), peak_memory_mb(large)
    print("(d) peak memory of the features step (fresh process each):")
    print(f"    {n_s:6d} cells: {mem_s:7.0f} MB")
    print(f"    {n_l:6d} cells: {mem_l:7.0f} MB  = {mem_l / mem_s:.2f}x the memory for {n_l / n_s:.1f}x the cells")


if __name__ == "__main__":
    main()
