"""Survival models over a patient's bag of patch features and/or RNA profile.

All share one attention-MIL pathology branch (gated attention, Ilse et al. 2018) and one
head that gives `n_bins` discrete-time hazard logits. `forward` returns (logits, embedding),
the embedding being the representation the head reads (used for distillation).
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionMIL(nn.Module):
    """Bag (n, dim) -> embedding (hidden,): attention-weighted mean of projected patches."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh())
        self.attn_u = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Sigmoid())
        self.attn_w = nn.Linear(hidden // 2, 1)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        h = self.project(bag)
        weights = torch.softmax(self.attn_w(self.attn_v(h) * self.attn_u(h)), dim=0)
        return (weights * h).sum(dim=0)


class RNAEncoder(nn.Module):
    """Profile (genes,) -> embedding (hidden,). With gene sets, one small network per set
    (a pathway/program token, as in pathway-grouped omics encoders), mixed by a linear layer;
    without, an MLP over all genes."""

    def __init__(self, n_genes: int, hidden: int, dropout: float, gene_sets: dict[str, list[int]] | None = None):
        super().__init__()
        self.sets = list((gene_sets or {}).values())
        if self.sets:
            for i, members in enumerate(self.sets):
                self.register_buffer(f"idx{i}", torch.tensor(members, dtype=torch.long))
            token = max(8, hidden // 4)
            self.per_set = nn.ModuleList(nn.Sequential(nn.Linear(len(m), token), nn.ELU()) for m in self.sets)
            self.mix = nn.Sequential(nn.Dropout(dropout), nn.Linear(token * len(self.sets), hidden), nn.ELU())
        else:
            self.mlp = nn.Sequential(nn.Linear(n_genes, hidden), nn.ELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden), nn.ELU())

    def forward(self, rna: torch.Tensor) -> torch.Tensor:
        if not self.sets:
            return self.mlp(rna)
        tokens = [net(rna[..., getattr(self, f"idx{i}")]) for i, net in enumerate(self.per_set)]
        return self.mix(torch.cat(tokens, dim=-1))


class PathologyModel(nn.Module):
    """Pathology alone: the no-distillation baseline."""

    def __init__(self, dim: int, n_bins: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.mil = GatedAttentionMIL(dim, hidden, dropout)
        self.head = nn.Linear(hidden, n_bins)

    def forward(self, bag, rna=None):
        z = self.mil(bag)
        return self.head(z), z


class RNAModel(nn.Module):
    """RNA alone: the genomics baseline."""

    def __init__(self, n_genes: int, n_bins: int, hidden: int = 128, dropout: float = 0.25, gene_sets=None):
        super().__init__()
        self.rna = RNAEncoder(n_genes, hidden, dropout, gene_sets)
        self.head = nn.Linear(hidden, n_bins)

    def forward(self, bag, rna):
        z = self.rna(rna)
        return self.head(z), z


class Teacher(nn.Module):
    """Pathology + RNA: attention-MIL embedding and RNA embedding, concatenated and fused.
    `forward` also exposes the RNA embedding (`genomic`), which the student's enhancement
    module learns to reproduce from pathology."""

    def __init__(self, dim: int, n_genes: int, n_bins: int, hidden: int = 128, dropout: float = 0.25,
                 gene_sets=None):
        super().__init__()
        self.mil = GatedAttentionMIL(dim, hidden, dropout)
        self.rna = RNAEncoder(n_genes, hidden, dropout, gene_sets)
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_bins)

    def encode(self, bag, rna):
        path, genomic = self.mil(bag), self.rna(rna)
        return self.fuse(torch.cat([path, genomic])), genomic

    def forward(self, bag, rna):
        z, _ = self.encode(bag, rna)
        return self.head(z), z


class AMKDStudent(nn.Module):
    """Pathology only at inference, with a gene-guided pathology enhancement (GPE) module.

    GPE (our reading of the AMKD abstract, which gives no formula): a network E maps the
    pathology embedding p to a pseudo-genomic embedding g' = E(p); a gate
    gamma = sigmoid(W [p; g']) injects it: z = fuse([p; gamma * g']). During training g' is
    pulled towards the frozen teacher's RNA embedding g (the `genomic` term of
    tissuekd.survival.losses.amkd_loss), so the student learns which morphology carries the
    genomic signal; at inference g' comes from pathology alone. The fused layout mirrors
    the teacher's, which makes z comparable with the teacher's fused embedding.
    """

    def __init__(self, dim: int, n_bins: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.mil = GatedAttentionMIL(dim, hidden, dropout)
        self.enhance = nn.Sequential(nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU())
        self.gate = nn.Linear(2 * hidden, hidden)
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_bins)

    def encode(self, bag):
        p = self.mil(bag)
        pseudo_genomic = self.enhance(p)
        gamma = torch.sigmoid(self.gate(torch.cat([p, pseudo_genomic])))
        return self.fuse(torch.cat([p, gamma * pseudo_genomic])), pseudo_genomic

    def forward(self, bag, rna=None):
        z, _ = self.encode(bag)
        return self.head(z), z
