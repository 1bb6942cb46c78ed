"""The fitting loops of the niche study's neighbourhood transformers.

The teacher (and Histology NOLAN) is NOLAN-style and self-supervised (NOLAN's code is not
public; this follows its description): trained DINO-style on two spatial views per cell —
the full neighbourhood and a local sub-crop at ~0.75 of the radius with random neighbour
dropout — against a momentum teacher whose outputs are centred and sharpened, with a
mean-entropy term so that all K prototypes stay in use (no collapse).

The student is the same transformer over H&E features, trained on train-strip cells only to
match the frozen teacher's logits; at inference it sees only H&E.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tissuekd.compute import CPU, Compute
from tissuekd.distill.losses import kd_loss
from tissuekd.niche.models import NeighborhoodTransformer
from tissuekd.spatial.neighborhoods import Neighborhoods
from tissuekd.training import optimise, shuffled_batches

log = logging.getLogger(__name__)


@dataclass
class NolanConfig:
    epochs: int = 3  # passes over the cells
    batch_size: int = 256
    lr: float = 2e-3
    student_temp: float = 0.1  # also the temperature that turns cosines into logits
    teacher_temp: float = 0.04  # sharpening
    center_momentum: float = 0.9
    ema: float = 0.99  # momentum teacher, annealed to 1
    local_scale: float = 0.75
    dropout: float = 0.3
    noise: float = 0.1  # token noise (features are standardised, so in standard deviations)
    me_max: float = 1.0  # weight of the mean-entropy regulariser
    d_model: int = 64
    layers: int = 2
    cells_per_epoch: int | None = None  # None: an epoch is one pass over every cell (budget grows with the slide)
    hide_centre: bool = True  # a niche is read from the neighbours (teacher view and inference alike)


def local_view(batch: Neighborhoods, scale: float, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Mask of a local sub-crop: neighbours within `scale` of the radius, some dropped at random."""
    keep = (torch.rand(batch.mask.shape, generator=generator) >= dropout).to(batch.mask.device)
    return batch.mask & (batch.offset.norm(dim=-1) <= scale) & keep


def fit_nolan(features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor, k: int, cfg: NolanConfig,
              seed: int = 0, progress: bool = True, compute: Compute = CPU) -> NeighborhoodTransformer:
    """Train on the neighbourhoods `nb` of cells `centres` (rows of standardised `features`);
    return the momentum teacher. Random draws come from a CPU generator, so a seed gives the
    same batches on any device.

    Parameters
    ----------
    features : torch.Tensor
        (N, D) standardised per-cell features (scVI latents for the teacher, reduced H&E for Histology NOLAN).
    nb : Neighborhoods
        The neighbourhoods of `centres`, in the same order (spatial.neighborhoods.build_neighborhoods).
    centres : torch.Tensor
        (Q,) rows of `features` trained on.
    k : int
        Number of niches (prototypes).
    cfg : NolanConfig
        Training settings.
    seed : int, default 0
        Seed of initialisation and of every random draw.
    progress : bool, default True
        Show a progress bar over epochs.
    compute : Compute, default CPU
        Device and precision.

    Returns
    -------
    NeighborhoodTransformer
        The momentum teacher, in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = compute.device
    features, nb, centres = features.to(dev), nb.to(dev), centres.to(dev)
    student = NeighborhoodTransformer(features.shape[1], k, cfg.d_model, cfg.layers).to(dev)
    teacher = copy.deepcopy(student).requires_grad_(False)
    per_epoch = min(len(centres), cfg.cells_per_epoch or len(centres))
    steps = cfg.epochs * int(np.ceil(per_epoch / cfg.batch_size))
    state = {"center": torch.zeros(k, device=dev)}  # the teacher's output centring, updated after each step

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(dev)
        b = nb[rows]
        with torch.no_grad(), compute.autocast():
            t_out = teacher(features, b.index, centres[rows], b.offset, b.mask, hide_centre=cfg.hide_centre)
            target = F.softmax((t_out - state["center"]) / cfg.teacher_temp, dim=-1)
        state["t_out"] = t_out
        local = local_view(b, cfg.local_scale, cfg.dropout, gen)
        glob = b.mask & (torch.rand(b.mask.shape, generator=gen) >= cfg.dropout / 3).to(dev)
        loss = 0.0
        # the local view hides the centre cell: agreement must come from the neighbourhood,
        # not from the one cell both views share (else the niches are just cell clusters)
        for view, hide in ((local, True), (glob, cfg.hide_centre)):
            with compute.autocast():
                s = student(features, b.index, centres[rows], b.offset, view, cfg.noise, hide)
            s = s.float() / cfg.student_temp
            probs = F.softmax(s, dim=-1)
            mean = probs.mean(dim=0)
            loss = loss + (-(target * F.log_softmax(s, dim=-1)).sum(-1).mean()
                           + cfg.me_max * (mean * torch.log(mean + 1e-8)).sum())
        return loss

    @torch.no_grad()
    def momentum_update(step: int) -> None:
        m = 1 - (1 - cfg.ema) * (np.cos(np.pi * step / steps) + 1) / 2
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)
        state["center"] = (cfg.center_momentum * state["center"]
                           + (1 - cfg.center_momentum) * state["t_out"].float().mean(dim=0))

    optimise(student.parameters(), cfg.epochs, lambda _: shuffled_batches(len(centres), cfg.batch_size, gen, per_epoch),
             loss_of, lr=cfg.lr, weight_decay=0.04, compute=compute, total_steps=steps, after_step=momentum_update,
             desc="nolan", progress=progress)
    return teacher.eval()


@dataclass
class StudentConfig:
    """The niche student's training; defaults as the schema's niche.student."""

    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 2.0
    d_model: int = 64
    layers: int = 2
    # candidate temperatures: chosen by agreement with the teacher on an inner validation band
    # of the training cells (tissuekd.niche.steps.choose_temperature); None: `temperature` as set
    select_temperature: list[float] | None = None
    inner_share: float = 0.25


def fit_student(features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor, teacher_logits: torch.Tensor,
                cfg: StudentConfig, seed: int = 0, progress: bool = True, compute: Compute = CPU
                ) -> NeighborhoodTransformer:
    """Distil the teacher's logits into a new student: `nb`/`centres` are train cells only;
    `teacher_logits[i]` is the target of `centres[i]`.

    Parameters
    ----------
    features : torch.Tensor
        (N, D) reduced H&E features of every cell (neighbours are gathered from it).
    nb : Neighborhoods
        The neighbourhoods of `centres`, in the same order, with neighbours from non-test cells only.
    centres : torch.Tensor
        (Q,) rows of `features` of the train cells.
    teacher_logits : torch.Tensor
        (Q, K) the teacher's logits of `centres`.
    cfg : StudentConfig
        Training settings; `temperature` is the distillation temperature.
    seed : int, default 0
        Seed of initialisation and batches.
    progress : bool, default True
        Show a progress bar over epochs.
    compute : Compute, default CPU
        Device and precision.

    Returns
    -------
    NeighborhoodTransformer
        The student, in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = compute.device
    features, nb, centres, teacher_logits = features.to(dev), nb.to(dev), centres.to(dev), teacher_logits.to(dev)
    k = teacher_logits.shape[1]
    model = NeighborhoodTransformer(features.shape[1], k, cfg.d_model, cfg.layers).to(dev)
    steps = cfg.epochs * int(np.ceil(len(centres) / cfg.batch_size))

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(dev)
        with compute.autocast():
            s = model(features, nb.index[rows], centres[rows], nb.offset[rows], nb.mask[rows])
        # the student's logits are cosines; a learnable scale is unnecessary: x10 as for the teacher
        return kd_loss(s.float() * 10.0, teacher_logits[rows], cfg.temperature)

    optimise(model.parameters(), cfg.epochs, lambda _: shuffled_batches(len(centres), cfg.batch_size, gen), loss_of,
             lr=cfg.lr, weight_decay=0.01, compute=compute, total_steps=steps, desc="student", progress=progress)
    return model.eval()


@torch.no_grad()
def predict_logits(model: NeighborhoodTransformer, features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor,
                   temperature: float, batch_size: int = 1024, hide_centre: bool = False,
                   compute: Compute = CPU) -> torch.Tensor:
    """K logits per centre cell (cosines / temperature), on the CPU, computed on `compute`'s device.

    Parameters
    ----------
    model : NeighborhoodTransformer
        A trained teacher or student (moved to the device, eval mode).
    features : torch.Tensor
        (N, D) per-cell features, as the model was trained on.
    nb : Neighborhoods
        The neighbourhoods of `centres`, in the same order.
    centres : torch.Tensor
        (Q,) rows of `features` to predict.
    temperature : float
        Cosines are divided by it (the steps use LOGIT_TEMP, 0.1).
    batch_size : int, default 1024
        Neighbourhoods per forward pass.
    hide_centre : bool, default False
        Hide the centre cell's own features, as the model was trained (NolanConfig.hide_centre).
    compute : Compute, default CPU
        Device and precision.

    Returns
    -------
    torch.Tensor
        (Q, K) float32 logits.
    """
    model.to(compute.device).eval()
    dev = compute.device
    features, nb, centres = features.to(dev), nb.to(dev), centres.to(dev)
    out = []
    for r in torch.arange(len(centres), device=dev).split(batch_size):
        with compute.autocast():
            out.append(model(features, nb.index[r], centres[r], nb.offset[r], nb.mask[r], hide_centre=hide_centre))
    return torch.cat(out).float().cpu() / temperature
