"""The niche student: the teacher's neighbourhood transformer over H&E features, trained
on train-strip cells only to match the teacher's logits; at inference it sees only H&E."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from tissuekd.distill.losses import kd_loss
from tissuekd.spatial.neighborhoods import Neighborhoods
from tissuekd.compute import CPU, Compute
from tissuekd.teachers.transformer import NeighborhoodTransformer

log = logging.getLogger(__name__)


@dataclass
class StudentConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 2.0
    d_model: int = 64
    layers: int = 2


def fit_student(features: torch.Tensor, nb: Neighborhoods, centres: torch.Tensor, teacher_logits: torch.Tensor,
                cfg: StudentConfig, seed: int = 0, progress: bool = True, compute: Compute = CPU
                ) -> NeighborhoodTransformer:
    """`nb`/`centres`: train cells only; `teacher_logits[i]` is the target of `centres[i]`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = compute.device
    features, nb, centres, teacher_logits = features.to(dev), nb.to(dev), centres.to(dev), teacher_logits.to(dev)
    k = teacher_logits.shape[1]
    model = NeighborhoodTransformer(features.shape[1], k, cfg.d_model, cfg.layers).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * int(np.ceil(len(centres) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    scaler = compute.grad_scaler()
    for epoch in tqdm(range(cfg.epochs), desc="student", disable=not progress, mininterval=5):
        total = 0.0
        for rows in torch.randperm(len(centres), generator=gen).split(cfg.batch_size):
            rows = rows.to(dev)
            with compute.autocast():
                s = model(features, nb.index[rows], centres[rows], nb.offset[rows], nb.mask[rows])
            # the student's logits are cosines; a learnable scale is unnecessary: x10 as for the teacher
            loss = kd_loss(s.float() * 10.0, teacher_logits[rows], cfg.temperature)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.item() * len(rows)
        log.info("epoch %d/%d KD loss %.4f", epoch + 1, cfg.epochs, total / len(centres))
    return model.eval()
