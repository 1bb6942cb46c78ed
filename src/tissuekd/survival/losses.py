"""Discrete-time survival loss, risk score, and the AMKD distillation terms."""

from __future__ import annotations

import numpy as np
import torch

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


VAR_EPS = 1e-12  # keeps a dimension constant over the batch at correlation 0, not NaN


def weighted_correlation(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Correlation matrix (dim_a, dim_b) of the columns of `a` and `b` over the batch, every
    statistic (means, variances, covariance) weighted by `w` (B, 1) that sums to 1. With
    `a` equal to `b` its diagonal is 1 whatever the weights."""
    da, db = a - (w * a).sum(0), b - (w * b).sum(0)
    cov = (w * da).T @ db
    var_a, var_b = (w * da.pow(2)).sum(0), (w * db.pow(2)).sum(0)
    return cov / torch.sqrt(var_a.unsqueeze(1) * var_b.unsqueeze(0) + VAR_EPS)


def adaptive_redundancy_reduction(z_student: torch.Tensor, z_teacher: torch.Tensor, discrepancy: torch.Tensor,
                                  off_diagonal: float = 0.005, sharpness: float = 1.0) -> torch.Tensor:
    """Redundancy reduction between student and teacher embeddings, weighted by how much
    their predictions disagree (our reading of AMKD's adaptive redundancy-reduction loss).

    Patients get weights w = softmax(sharpness * d) from the (detached) discrepancy d between
    teacher and student risk, so patients the student gets wrong shape the statistics more.
    C is the w-weighted cross-correlation of student and teacher dimensions and T the teacher's
    own w-weighted correlation (means, variances and covariances all under the same weights,
    so identical embeddings give C = T with a unit diagonal for any weights). The loss is
    sum_i (1 - C_ii)^2 + off_diagonal * sum_{i!=j} (C_ij - T_ij)^2, divided by the width.

    Why T and not Barlow Twins' identity target: a batch of B patients gives correlation
    matrices of rank <= B - 1, so with 8 patients and 64 dimensions C = I cannot be reached
    and the loss would pull the student away from a perfect copy of the teacher. Measuring
    the off-diagonal redundancy against the teacher's own keeps the loss >= 0 with its
    minimum, 0, exactly where the student's embedding equals the teacher's, at any batch
    size: the student is asked not to be more redundant than its teacher.

    Parameters
    ----------
    z_student : torch.Tensor
        (B, dim) the student's embeddings of the batch's patients.
    z_teacher : torch.Tensor
        (B, dim) the teacher's fused embeddings of the same patients.
    discrepancy : torch.Tensor
        (B,) |student risk - teacher risk| per patient (detached here).
    off_diagonal : float, default 0.005
        Weight of the off-diagonal term.
    sharpness : float, default 1.0
        Multiplies the discrepancy inside the softmax; 0 gives every patient the same weight.

    Returns
    -------
    torch.Tensor
        The scalar loss (0 where the student's embeddings equal the teacher's).
    """
    w = torch.softmax(sharpness * discrepancy.detach().float(), dim=0).unsqueeze(1)
    z_student, z_teacher = z_student.float(), z_teacher.float()
    c = weighted_correlation(z_student, z_teacher, w)
    t = weighted_correlation(z_teacher, z_teacher, w).detach()
    diag = torch.diagonal(c)
    off = (c - t) - torch.diag_embed(torch.diagonal(c - t))
    return ((1 - diag).pow(2).sum() + off_diagonal * off.pow(2).sum()) / z_student.shape[1]


def genomic_alignment(pseudo: torch.Tensor, genomic: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's pseudo-genomic embedding and the teacher's RNA
    embedding, each dimension scaled by the teacher's spread over the batch (so dimensions that
    vary between patients, i.e. carry the RNA signal, count; constant ones do not dominate)."""
    scale = genomic.std(0, keepdim=True) + 1e-3
    return ((pseudo - genomic) / scale).pow(2).mean()
