"""Benchmark the niche models on a finished demo slide; prints throughputs and two ratios.

(a) student training: neighbourhoods/s through `fit_student` (gathering, KD loss, optimiser)
    vs the same steps on one preloaded batch (the model-only limit);
(b) teacher inference: neighbourhoods/s batched (as the workflow runs it) vs one neighbourhood
    at a time.

    python -m tissuekd.bench.niche --results results --slide breast_demo [--encoder demo-mobilenet --k 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tissuekd.distill.losses import kd_loss
from tissuekd.io.columns import CELL_ID, XY_UM
from tissuekd.niche.models import NeighborhoodTransformer
from tissuekd.niche.steps import LOGIT_TEMP, load_model, read_logits, reduce_features, slide_inputs, standardize
from tissuekd.niche.train import StudentConfig, fit_student, predict_logits
from tissuekd.spatial.neighborhoods import build_neighborhoods


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_student(x, nb, train, teacher, epochs: int) -> None:
    """(a) Prints neighbourhoods/s through `fit_student` and on one preloaded batch, and their ratio.

    Parameters
    ----------
    x : torch.Tensor
        (cells, FEATURE_DIM) reduced H&E features.
    nb : Neighborhoods
        The neighbourhoods of the train cells.
    train : torch.Tensor
        (Q,) rows of `x` of the train cells.
    teacher : torch.Tensor
        (Q, K) the teacher's logits of the train cells.
    epochs : int
        Passes over the train cells.
    """
    cfg = StudentConfig(epochs=epochs)
    seconds = _timed(lambda: fit_student(x, nb, train, teacher, cfg, progress=False))
    rate = epochs * len(train) / seconds
    # the limit: forward+backward+step on one batch gathered once, no shuffling or indexing
    model = NeighborhoodTransformer(x.shape[1], teacher.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rows = torch.arange(min(cfg.batch_size, len(train)))
    args = (x, nb.index[rows], train[rows], nb.offset[rows], nb.mask[rows])
    target = teacher[rows]
    steps = max(1, int(np.ceil(len(train) / cfg.batch_size)))

    def model_only():
        for _ in range(steps):
            loss = kd_loss(model(*args) * 10.0, target, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()

    limit = steps * len(rows) / _timed(model_only)
    print(f"(a) student training, {len(train)} train neighbourhoods x {epochs} epochs:")
    print(f"    fit_student:               {rate:8.0f} neighbourhoods/s")
    print(f"    model only, one batch:     {limit:8.0f} neighbourhoods/s   ratio {rate / limit:.2f}")


def bench_inference(model, x, nb, cells: torch.Tensor, single: int = 300) -> None:
    """(b) Prints the teacher's neighbourhoods/s batched (1,024) and one at a time, and their ratio.

    Parameters
    ----------
    model : NeighborhoodTransformer
        The slide's teacher.
    x : torch.Tensor
        (cells, 10) standardised scVI latents.
    nb : Neighborhoods
        The neighbourhoods of `cells`.
    cells : torch.Tensor
        Rows of `x` predicted.
    single : int, default 300
        Neighbourhoods timed one at a time.
    """
    batched = len(cells) / _timed(lambda: predict_logits(model, x, nb, cells, LOGIT_TEMP, hide_centre=True))
    one = single / _timed(lambda: predict_logits(model, x, nb[:single], cells[:single], LOGIT_TEMP, batch_size=1,
                                                 hide_centre=True))
    print(f"(b) teacher inference on scVI latents, {len(cells)} neighbourhoods:")
    print(f"    batched (1024):            {batched:8.0f} neighbourhoods/s")
    print(f"    one at a time:             {one:8.0f} neighbourhoods/s   ratio {batched / one:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--slide", default="breast_demo")
    parser.add_argument("--encoder", default="demo-mobilenet")
    parser.add_argument("--k", default=10, type=int)
    parser.add_argument("--epochs", default=2, type=int)
    parser.add_argument("--max-neighbors", default=32, type=int)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    slide = args.results / "niche" / args.slide
    enc = slide / args.encoder
    cells, role, radius = slide_inputs(str(slide / "cells.parquet"), str(enc / "split.parquet"),
                                        str(slide / "radius.json"))
    train = np.flatnonzero(role == "train")
    features = str(args.results / "niche" / "features" / args.encoder / f"{args.slide}.h5")
    x = reduce_features(features, cells, train)
    teacher_dir = slide / f"k{args.k}" / "teacher"
    teacher = torch.from_numpy(read_logits(str(teacher_dir / "logits.parquet"), cells, args.k))
    xy = cells[XY_UM].to_numpy()
    print(f"{args.slide}: {len(cells)} cells, radius {radius:.1f} um, {torch.get_num_threads()} threads")
    nb = build_neighborhoods(xy, train, radius, args.max_neighbors, allowed=role != "test")
    bench_student(x, nb, torch.from_numpy(train), teacher[train], args.epochs)
    everyone = np.arange(len(cells))
    latent = pd.read_parquet(slide / "scvi" / "latent.parquet").drop(columns=CELL_ID).to_numpy(np.float32)
    bench_inference(load_model(str(teacher_dir / "model.pt")), standardize(latent, everyone),
                    build_neighborhoods(xy, everyone, radius, args.max_neighbors), torch.from_numpy(everyone))


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
