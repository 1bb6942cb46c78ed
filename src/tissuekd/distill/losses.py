"""The distillation losses more than one study uses: temperature KL (the niche student),
probability MSE and learnable uncertainty weighting (the segmentation students). Each study's own
terms are in its `losses` module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over cells (Hinton et al.)."""
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def probability_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """mean((sigmoid(s) - p_t)^2) over every element: the student's probabilities against the
    frozen teacher's (bounded, so a confident teacher pixel cannot dominate as in BCE)."""
    return F.mse_loss(torch.sigmoid(student_logits), teacher_probs)


class UncertaintyWeights(nn.Module):
    """Learnable task weighting (Kendall, Gal & Cipolla 2018): L = sum_i exp(-s_i) L_i + s_i,
    with s_i = log sigma_i^2 learnt beside the model. A term's weight exp(-s_i) falls as its
    loss stays high, and the + s_i keeps every weight from collapsing to zero.

    Each s_i starts at log L_i of the first batch where its term is non-zero: the minimiser of
    exp(-s) L + s for that L, so every term starts at weight 1/L_i (its scale). Started at 0
    instead, s moves by about the learning rate per Adam step, so in a short schedule (the
    segmentation demo's 100 steps at 1e-3) the weights stayed at ~1.05 and a term a hundred
    times smaller than another (MSE of probabilities beside a BCE) stayed a hundred times
    weaker."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names
        self.log_vars = nn.Parameter(torch.zeros(len(names)))
        self.register_buffer("started", torch.zeros(len(names), dtype=torch.bool))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = torch.stack([losses[name] for name in self.names])
        start = ~self.started & (terms.detach() > 0)
        if start.any():
            with torch.no_grad():
                self.log_vars[start] = torch.log(terms.detach()[start].float())
            self.started |= start
        return (torch.exp(-self.log_vars) * terms + self.log_vars).sum()

    def weights(self) -> dict[str, float]:
        return {name: float(w) for name, w in zip(self.names, torch.exp(-self.log_vars.detach()))}
