"""NOLAN-style self-supervised niche model (NOLAN's code is not public; this follows its
description): a neighbourhood transformer trained DINO-style on two spatial views per
cell — the full neighbourhood and a local sub-crop at ~0.75 of the radius with random
neighbour dropout — against a momentum teacher whose outputs are centred and sharpened,
with a mean-entropy term so that all K prototypes stay in use (no collapse).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tissuekd.spatial.neighborhoods import Neighborhoods
from tissuekd.compute import CPU, Compute
from tissuekd.teachers.transformer import NeighborhoodTransformer

log = logging.getLogger(__name__)


@dataclass
class NolanConfig:
    epochs: int = 20
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
    cells_per_epoch: int = 6000  # an epoch visits a random subset: big slides need no more to converge
    hide_centre: bool = True  # a niche is read from the neighbours (teacher view and inference alike)


def local_view(batch: Neighborhoods, scale: float, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Mask of a local sub-crop: neighbours within `scale` of the radius, some dropped at random."""
    keep = (torch.rand(batch.mask.shape, generator=generator) >= dropout).to(batch.mask.device)
    return batch.mask & (batch.offset.norm(dim=-1) <= scale) & keep


def fit_nolan(features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor, k: int, cfg: NolanConfig,
              seed: int = 0, progress: bool = True, compute: Compute = CPU) -> NeighborhoodTransformer:
    """Train on the neighbourhoods `nb` of cells `centres` (rows of standardised `features`);
    return the momentum teacher. Random draws come from a CPU generator, so a seed gives the
    same batches on any device."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = compute.device
    features, nb, centres = features.to(dev), nb.to(dev), centres.to(dev)
    student = NeighborhoodTransformer(features.shape[1], k, cfg.d_model, cfg.layers).to(dev)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.04)
    per_epoch = min(len(centres), cfg.cells_per_epoch)
    steps = cfg.epochs * int(np.ceil(per_epoch / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    center = torch.zeros(k, device=dev)
    scaler = compute.grad_scaler()
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc="nolan", disable=not progress, mininterval=5):
        for rows in torch.randperm(len(centres), generator=gen)[:per_epoch].split(cfg.batch_size):
            rows = rows.to(dev)
            b = nb[rows]
            with torch.no_grad(), compute.autocast():
                t_out = teacher(features, b.index, centres[rows], b.offset, b.mask, hide_centre=cfg.hide_centre)
                target = F.softmax((t_out - center) / cfg.teacher_temp, dim=-1)
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
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            m = 1 - (1 - cfg.ema) * (np.cos(np.pi * step / steps) + 1) / 2
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), student.parameters()):
                    pt.mul_(m).add_(ps.detach(), alpha=1 - m)
                center = cfg.center_momentum * center + (1 - cfg.center_momentum) * t_out.float().mean(dim=0)
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, loss.item())
    return teacher.eval()


@torch.no_grad()
def predict_logits(model: NeighborhoodTransformer, features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor,
                   temperature: float, batch_size: int = 1024, hide_centre: bool = False,
                   compute: Compute = CPU) -> torch.Tensor:
    """K logits per centre cell (cosines / temperature), on the CPU, computed on `compute`'s device."""
    model.to(compute.device).eval()
    dev = compute.device
    features, nb, centres = features.to(dev), nb.to(dev), centres.to(dev)
    out = []
    for r in torch.arange(len(centres), device=dev).split(batch_size):
        with compute.autocast():
            out.append(model(features, nb.index[r], centres[r], nb.offset[r], nb.mask[r], hide_centre=hide_centre))
    return torch.cat(out).float().cpu() / temperature
