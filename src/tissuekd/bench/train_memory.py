"""Host memory of the segmentation study's training on a CPU: the peak resident size of
`tissuekd.segmentation.train.fit` (kd mode, smp's default decoder, fp32) for each backbone at a
small and a large batch (batch x tile^2 pixels), each in its own process, and the kB per pixel
between the two: what the training rules add to their memory ask where they may run on a CPU
(TRAIN_KB_PER_PIXEL, workflow/rules/common_segmentation.smk).

    python -m tissuekd.bench.train_memory [--small 8 64 --large 16 256 --steps 3 --threads 2
                                           --backbones swin-tiny resnet18 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from tissuekd.segmentation.models import BACKBONES


def peak_mb(backbone: str, batch: int, tile: int, steps: int, threads: int) -> float:
    """Peak RSS (MB) of one fit in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "tissuekd.bench.train_memory", "--one", backbone, str(batch), str(tile),
                          "--steps", str(steps), "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def fit_once(backbone: str, batch: int, tile: int, steps: int, threads: int) -> float:
    """Train `steps` kd steps on 8 random 512-px (or `tile`-px) images; the process's peak RSS (MB,
    10^6 bytes, the unit of Snakemake's mem_mb)."""
    import torch

    from tissuekd.segmentation.train import SegTrainConfig, fit

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n, side = 8, max(512, tile)
    images = rng.integers(0, 255, (n, side, side, 1), dtype=np.uint8)
    labels = np.zeros((n, side, side), np.int32)
    for i in range(n):
        for cell, (r, c) in enumerate(rng.integers(10, side - 10, (40, 2)), start=1):
            labels[i, r - 6:r + 6, c - 6:c + 6] = cell
    probs = rng.random((n, 2, side, side), dtype=np.float32)
    fit(backbone, images, labels, SegTrainConfig(epochs=1, steps_per_epoch=steps, batch_size=batch, tile=tile),
        mode="kd", teacher_probs=probs)
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident size in MB (10^6 bytes, as mem_mb): Linux's VmHWM (the
    project runs on Linux), which starts afresh at exec; ru_maxrss would also count the forking
    parent's size (measured: a 2.2 GB pytest worker made every child's peak 2.2 GB)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024 / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, nargs=2, default=[8, 64], metavar=("BATCH", "TILE"),
                        help="the demo's training batch")
    parser.add_argument("--large", type=int, nargs=2, default=[16, 256], metavar=("BATCH", "TILE"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--one", nargs=3, metavar=("BACKBONE", "BATCH", "TILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        backbone, batch, tile = args.one
        print(fit_once(backbone, int(batch), int(tile), args.steps, args.threads))
        return
    (b1, t1), (b2, t2) = args.small, args.large
    pixels = b1 * t1**2, b2 * t2**2
    print(f"training on a CPU, kd, fp32, {args.steps} steps: peak resident MB at {b1} x {t1} px and "
          f"{b2} x {t2} px ({pixels[1] / pixels[0]:.0f}x the pixels)")
    for backbone in args.backbones:
        small, large = (peak_mb(backbone, b, t, args.steps, args.threads) for b, t in (args.small, args.large))
        per_pixel = (large - small) * 1000 / (pixels[1] - pixels[0])
        print(f"{backbone:16s} {small:6.0f} MB  {large:6.0f} MB  {large / small:.2f}x  {per_pixel:.2f} kB per pixel")


if __name__ == "__main__":
    main()
