"""Speed of the segmentation models: inference throughput in megapixels per second of the
multiplex teacher (two channels, its backbone) and each student backbone (the nuclear channel),
through the same overlap-tiled `predict` the evaluation uses, with each student's speed-up over
the teacher; then one training step of each student (a batch of random crops, forward, backward,
AdamW) at smp's decoder widths and at `--decoder`, and the ratio. Models are untrained (speed
does not depend on the weights).

    python -m tissuekd.bench.segmentation [--size 512 --images 4 --tile 64 --threads 1
                                           --decoder 128 64 32 16 16 --batch 8 --steps 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tissuekd.segmentation.models import BACKBONES, DECODER, build_unet, parameter_count
from tissuekd.segmentation.train import predict


def megapixels_per_second(model: torch.nn.Module, images: np.ndarray, tile: int) -> float:
    model = model.eval()
    predict(model, images[:1, :tile, :tile], tile)  # warm-up
    start = time.perf_counter()
    predict(model, images, tile)
    return images.shape[0] * images.shape[1] * images.shape[2] / 1e6 / (time.perf_counter() - start)


def seconds_per_step(model: torch.nn.Module, batch: int, tile: int, steps: int) -> float:
    """Mean seconds of a training step on random one-channel crops, after one warm-up step."""
    x = torch.randn(batch, 1, tile, tile)
    optimiser = torch.optim.AdamW(model.train().parameters())

    def step():
        optimiser.zero_grad()
        model(x).square().mean().backward()
        optimiser.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side (TissueNet tiles are 512 px)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--tile", type=int, default=64, help="the window the models were trained on")
    parser.add_argument("--teacher", default="resnet18", choices=sorted(BACKBONES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decoder", type=int, nargs=5, default=[128, 64, 32, 16, 16],
                        help="decoder widths compared with smp's default in a training step (the demo's)")
    parser.add_argument("--batch", type=int, default=8, help="crops per training step")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).random((args.images, args.size, args.size, 2)).astype(np.float32)
    teacher = megapixels_per_second(build_unet(args.teacher, 2, args.tile), images, args.tile)
    print(f"inference: {args.images} images of {args.size} px, {args.tile}-px windows at half-tile steps, "
          f"{args.threads} thread(s), fp32, smp's decoder widths {list(DECODER)}")
    print(f"teacher {args.teacher} (2 channels): {teacher:.3f} MP/s")
    for backbone in BACKBONES:
        model = build_unet(backbone, 1, args.tile)
        mps = megapixels_per_second(model, images[..., :1], args.tile)
        print(f"student {backbone:16s} {mps:.3f} MP/s  {mps / teacher:.2f}x the teacher  "
              f"{parameter_count(model) / 1e6:.1f} M parameters")
    print(f"training step: {args.batch} crops of {args.tile} px, decoder {list(DECODER)} vs {args.decoder}")
    for backbone in BACKBONES:
        full, small = (build_unet(backbone, 1, args.tile, widths) for widths in (DECODER, args.decoder))
        t_full, t_small = (seconds_per_step(m, args.batch, args.tile, args.steps) for m in (full, small))
        print(f"student {backbone:16s} {1000 * t_full:.0f} ms vs {1000 * t_small:.0f} ms  "
              f"{t_full / t_small:.2f}x faster  {parameter_count(full) / 1e6:.1f} M vs "
              f"{parameter_count(small) / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
