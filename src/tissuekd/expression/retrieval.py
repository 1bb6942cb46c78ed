"""Top-k retrieval by cosine similarity, exact, in chunks of queries: memory is one chunk x bank
of scores at a time, whatever the number of test spots."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def topk_cosine(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """(Q, k) indices of the k rows of `bank` most cosine-similar to each query, best first.
    Computed on the tensors' device."""
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=-1)
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=-1)
        out.append((q @ bank.T).topk(k, dim=-1).indices)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def mean_of_neighbours(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(Q, genes): the mean of `values` over each query's retrieved rows `index` (Q, k)."""
    return values[index].mean(axis=1)
