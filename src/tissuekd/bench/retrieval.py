"""Retrieval benchmark: top-k cosine search of test spots in a bank of training spots, exact
(chunked, as expression.retrieval.topk_cosine) against the IVF index (faiss), in one run.

    python -m tissuekd.bench.retrieval [--bank 1000000] [--queries 2000] [--dim 256] [--k 50] [--nprobe 8 32]

The bank is synthetic: embeddings drawn around 2,000 centres (as spots of a few tissue
compartments cluster), normalised. Prints queries per second of each search, the IVF index's
build time, its recall@k against the exact top-k, and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tissuekd.expression.retrieval import SCORE_BUDGET, ivf_index, topk_cosine, topk_ivf


def synthetic_bank(n: int, dim: int, seed: int = 0, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: the draw never holds more than one block of noise
        rows = min(100_000, n - start)
        out[start : start + rows] = means[rng.integers(0, centres, rows)] + 0.7 * rng.standard_normal((rows, dim))
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k that the approximate search also returns."""
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    bank = synthetic_bank(args.bank + args.queries, args.dim)
    queries, bank = bank[: args.queries], bank[args.queries :]
    print(f"bank {len(bank):,} x {args.dim}, {len(queries):,} queries, k = {args.k}, "
          f"{torch.get_num_threads()} torch threads")
    t = time.perf_counter()
    exact = topk_cosine(torch.from_numpy(queries), torch.from_numpy(bank), args.k).numpy()
    exact_qps = len(queries) / (time.perf_counter() - t)
    chunk = max(1, min(4096, SCORE_BUDGET // len(bank)))
    print(f"exact (chunked, {chunk:,} queries x bank at a time): {exact_qps:,.0f} queries/s")
    t = time.perf_counter()
    index = ivf_index(bank)
    print(f"IVF index: {index.nlist:,} lists, built in {time.perf_counter() - t:.1f} s")
    for nprobe in args.nprobe:
        t = time.perf_counter()
        found = topk_ivf(index, queries, args.k, nprobe)
        qps = len(queries) / (time.perf_counter() - t)
        print(f"IVF nprobe {nprobe}: {qps:,.0f} queries/s ({qps / exact_qps:.1f}x exact), "
              f"recall@{args.k} {recall(found, exact):.3f}")


if __name__ == "__main__":
    main()
