"""Top-k retrieval of training spots by cosine similarity.

CMRCNet's paper names its inference speed its main limitation: every test patch is compared
with every training spot. Here the exact search runs in chunks of queries (memory: one chunk x
bank of scores at a time, on the tensors' device), and for large banks an inverted-file index
(faiss IndexIVFFlat over normalised vectors, inner product = cosine) visits `nprobe` of its
lists per query. `python -m tissuekd.bench.retrieval` measures both (queries/s, recall@k).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
AUTO_IVF_BANK = 200_000  # index "auto": exact below this many training spots, IVF above
SCORE_BUDGET = 2**26  # scores held at once by the exact search (256 MB of float32)


def topk_cosine(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int | None = None) -> torch.Tensor:
    """(Q, k) indices of the k rows of `bank` most cosine-similar to each query, best first.
    Queries go in chunks of `chunk` (default: as many as SCORE_BUDGET scores allow)."""
    k = min(k, len(bank))
    chunk = chunk or max(1, min(4096, SCORE_BUDGET // max(len(bank), 1)))
    bank = F.normalize(bank.float(), dim=-1)
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=-1)
        out.append((q @ bank.T).topk(k, dim=-1).indices)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def ivf_index(bank: np.ndarray, nlist: int | None = None, seed: int = 0, train_rows: int = 100_000):
    """A faiss inverted-file index of the normalised bank: `nlist` k-means lists (default
    4 sqrt(n)) trained on at most `train_rows` rows."""
    import faiss

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    faiss.normalize_L2(bank)
    nlist = nlist or max(1, int(4 * np.sqrt(len(bank))))
    quantizer = faiss.IndexFlatIP(bank.shape[1])
    index = faiss.IndexIVFFlat(quantizer, bank.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    rows = np.random.default_rng(seed).permutation(len(bank))[:max(train_rows, 39 * nlist)]
    index.train(bank[np.sort(rows)])
    index.add(bank)
    return index


def topk_ivf(index, queries: np.ndarray, k: int, nprobe: int = 32) -> np.ndarray:
    """(Q, k) approximate top-k indices from an ivf_index (best first)."""
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    faiss.normalize_L2(q)
    index.nprobe = nprobe
    return index.search(q, min(k, index.ntotal))[1]


def retrieve(queries: torch.Tensor, bank: torch.Tensor, k: int, index: str = "auto", nprobe: int = 32) -> np.ndarray:
    """Top-k indices by the configured search: "exact", "ivf", or "auto" (IVF above AUTO_IVF_BANK rows)."""
    if index == "ivf" or (index == "auto" and len(bank) > AUTO_IVF_BANK):
        log.info("retrieval: IVF index over %d training spots, nprobe %d", len(bank), nprobe)
        return topk_ivf(ivf_index(bank.cpu().numpy()), queries.cpu().numpy(), k, nprobe)
    return topk_cosine(queries, bank, k).cpu().numpy()


def mean_of_neighbours(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(Q, genes): the mean of `values` over each query's retrieved rows `index` (Q, k)."""
    return values[index].mean(axis=1)


def distinct_neighbourhoods(index: np.ndarray) -> int:
    """How many different sets of training spots the queries retrieved: 1 for several queries
    means the query embeddings collapsed to one point and every prediction is the same."""
    return len(np.unique(np.sort(np.asarray(index), axis=1), axis=0))
