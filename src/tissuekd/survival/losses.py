"""Discrete-time survival loss, risk score, and the AMKD distillation terms."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-7


def time_bins(times: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges: quantiles of the uncensored times (n_bins - 1 edges; the outer bins
    are open-ended). Fitted on training patients only."""
    uncensored = times[events.astype(bool)]
    if len(uncensored) < n_bins:
        raise ValueError(f"{len(uncensored)} events are too few for {n_bins} time bins")
    return np.unique(np.quantile(uncensored, np.linspace(0, 1, n_bins + 1)[1:-1]))


def to_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.digitize(times, edges, right=False)


def nll_survival(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time hazard model (Zadeh & Schmid 2020, as in
    MCAT/PORPOISE): hazard h_j = sigmoid(logit_j), survival S_j = prod_{i<=j} (1 - h_i).
    An event in bin y contributes -log S_{y-1} - log h_y; a patient censored in bin y,
    -log S_y. `alpha` up-weights the uncensored term: (1 - alpha) * all + alpha * uncensored."""
    hazards = torch.sigmoid(logits).clamp(EPS, 1 - EPS)
    survival = torch.cumprod(1 - hazards, dim=1)
    padded = torch.cat([torch.ones_like(survival[:, :1]), survival], dim=1)  # S_{-1} = 1
    y = bins.long().unsqueeze(1)
    event = events.float()
    before = torch.gather(padded, 1, y).clamp_min(EPS)
    at = torch.gather(hazards, 1, y)
    after = torch.gather(padded, 1, y + 1).clamp_min(EPS)
    uncensored = -event * (torch.log(before) + torch.log(at)).squeeze(1)
    censored = -(1 - event) * torch.log(after).squeeze(1)
    return ((1 - alpha) * (uncensored + censored) + alpha * uncensored).mean()


def risk_score(logits: torch.Tensor) -> torch.Tensor:
    """Higher = worse: minus the sum of the survival curve over the bins (expected bins survived)."""
    return -torch.cumprod(1 - torch.sigmoid(logits), dim=1).sum(dim=1)


def hazard_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft targets for hazards: per-bin binary KL(teacher || student) at temperature T, times T^2."""
    t = torch.sigmoid(teacher / temperature).clamp(EPS, 1 - EPS)
    s = torch.sigmoid(student / temperature).clamp(EPS, 1 - EPS)
    kl = t * torch.log(t / s) + (1 - t) * torch.log((1 - t) / (1 - s))
    return kl.sum(dim=1).mean() * temperature**2


def adaptive_redundancy_reduction(z_student: torch.Tensor, z_teacher: torch.Tensor, discrepancy: torch.Tensor,
                                  off_diagonal: float = 0.005, sharpness: float = 1.0) -> torch.Tensor:
    """Redundancy reduction between student and teacher embeddings, weighted by how much
    their predictions disagree (our reading of AMKD's adaptive redundancy-reduction loss).

    Both embeddings are standardised over the batch; their cross-correlation C is computed
    with per-patient weights w = B * softmax(sharpness * d) from the (detached) discrepancy d
    between teacher and student risk, so patients the student gets wrong shape C more. The
    loss is Barlow Twins' sum_i (1 - C_ii)^2 + off_diagonal * sum_{i!=j} C_ij^2, divided by
    the embedding width: the diagonal aligns each student dimension with the teacher's, the
    off-diagonal term keeps the dimensions from carrying the same (redundant) information.
    """
    b, dim = z_student.shape
    w = torch.softmax(sharpness * discrepancy.detach(), dim=0).unsqueeze(1)  # sums to 1
    zs = (z_student - (w * z_student).sum(0)) / (z_student.std(0) + 1e-4)
    zt = (z_teacher - (w * z_teacher).sum(0)) / (z_teacher.std(0) + 1e-4)
    c = (w * zs).T @ zt  # weighted cross-correlation (dim, dim)
    diag = torch.diagonal(c)
    off = c - torch.diag_embed(diag)
    return ((1 - diag).pow(2).sum() + off_diagonal * off.pow(2).sum()) / dim


def genomic_alignment(pseudo: torch.Tensor, genomic: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's pseudo-genomic embedding and the teacher's RNA
    embedding, each dimension scaled by the teacher's spread over the batch (so dimensions that
    vary between patients, i.e. carry the RNA signal, count; constant ones do not dominate)."""
    scale = genomic.std(0, keepdim=True) + 1e-3
    return ((pseudo - genomic) / scale).pow(2).mean()
