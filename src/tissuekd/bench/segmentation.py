"""Inference throughput of the segmentation models, in megapixels per second: the multiplex
teacher (two channels, its backbone) and each student backbone (the nuclear channel), through
the same overlap-tiled `predict` the evaluation uses; prints each student's speed-up over the
teacher. Models are untrained (speed does not depend on the weights).

    python -m tissuekd.bench.segmentation [--size 512 --images 4 --tile 64 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tissuekd.segmentation.models import BACKBONES, build_unet, parameter_count
from tissuekd.segmentation.train import predict


def megapixels_per_second(backbone: str, channels: int, images: np.ndarray, tile: int) -> float:
    model = build_unet(backbone, channels, tile).eval()
    predict(model, images[:1, :tile, :tile, :channels], tile)  # warm-up
    start = time.perf_counter()
    predict(model, images[..., :channels], tile)
    return images.shape[0] * images.shape[1] * images.shape[2] / 1e6 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side (TissueNet tiles are 512 px)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--tile", type=int, default=64, help="the window the models were trained on")
    parser.add_argument("--teacher", default="resnet18", choices=sorted(BACKBONES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).random((args.images, args.size, args.size, 2)).astype(np.float32)
    teacher = megapixels_per_second(args.teacher, 2, images, args.tile)
    print(f"{args.images} images of {args.size} px, {args.tile}-px windows at half-tile steps, "
          f"{args.threads} thread(s), fp32")
    print(f"teacher {args.teacher} (2 channels): {teacher:.3f} MP/s")
    for backbone in BACKBONES:
        mps = megapixels_per_second(backbone, 1, images, args.tile)
        params = parameter_count(build_unet(backbone, 1, args.tile))
        print(f"student {backbone:16s} {mps:.3f} MP/s  {mps / teacher:.2f}x the teacher  "
              f"{params / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
