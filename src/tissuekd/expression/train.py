"""CMRCNet's fitting loop: stage 1 aligns image and gene embeddings contrastively; stage 2 adds
the cross-modal mask reconstruction (models.py, losses.py). Without reconstruction the same
loop, for the same epochs, is the BLEEP-style contrastive-only ablation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from tissuekd.compute import CPU, Compute
from tissuekd.expression.finetune import PatchBank, TunedEncoder
from tissuekd.expression.losses import contrastive_loss, reconstruction_loss
from tissuekd.expression.models import DIM, CMRCNet
from tissuekd.training import optimise, shuffled_batches

log = logging.getLogger(__name__)
CHECK_SPOTS = 2048  # training spots on which the trained reconstruction is checked to read the genes


@dataclass
class CMRCNetConfig:
    stage1_epochs: int = 20  # contrastive only (defaults as the schema's expression.cmrcnet)
    stage2_epochs: int = 20  # contrastive + reconstruction (contrastive only for the ablation)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    temperature: float = 1.0  # the paper's
    mask_ratio: float = 0.5  # the paper's: the share of each spot's image tokens masked in stage 2
    top_k: int = 50  # training spots averaged per test spot (the paper: 50 and 500)
    index: str = "auto"  # retrieval: exact, ivf (faiss), or auto (ivf above retrieval.AUTO_IVF_BANK spots)
    nprobe: int = 32  # ivf lists visited per query
    finetune_blocks: int = 0  # the encoder's last blocks trained too (finetune.py; meant for GPUs); 0: frozen features
    finetune_lr: float = 1e-5  # their learning rate (the schedule's peak, as `lr` is the head's)


def token_mask(n: int, tokens: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(n, tokens) bool, False on round(ratio · tokens) tokens per spot, drawn anew per spot."""
    permutation = torch.rand(n, tokens, generator=gen).argsort(1)  # a random permutation per spot
    return permutation >= round(ratio * tokens)


def fit_cmrcnet(features: torch.Tensor, expression: torch.Tensor, cfg: CMRCNetConfig, *, reconstruct: bool = True,
                seed: int = 0, compute: Compute = CPU, progress: bool = False,
                tuned: tuple[TunedEncoder, PatchBank] | None = None) -> CMRCNet:
    """Train on training spots only: `features` (n, d) standardised, `expression` (n, genes)
    normalised. Random draws (batches, masks) come from CPU generators seeded by `seed`, so a
    seed gives the same model on any run. With `tuned` (an encoder whose last blocks train, and
    the training spots' patches, rows aligned with `features`) the image side reads each batch's
    patches through the encoder instead of `features`, and the encoder's tail trains at
    `cfg.finetune_lr`.

    Loss per batch: L = L_con (stage 1); L = L_con + L_rec (stage 2, when `reconstruct`).
    (The authors' code adds log(1 + L_con) + log(1 + L_rec); the issue's plain sum is kept.)
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = compute.device
    features, expression = features.to(dev), expression.to(dev)
    model = CMRCNet(features.shape[1], expression.shape[1]).to(dev)
    groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    if tuned is not None:
        encoder, bank = tuned
        encoder.to(dev).train()
        groups.append({"params": encoder.tail, "lr": cfg.finetune_lr})
    epochs = cfg.stage1_epochs + cfg.stage2_epochs
    n = len(features)

    def batches(epoch: int):
        return ((epoch, rows) for rows in shuffled_batches(n, cfg.batch_size, gen) if len(rows) > 1)

    def loss_of(batch) -> torch.Tensor:
        epoch, rows = batch
        rows = rows.to(dev)
        with compute.autocast():
            image_in = features[rows] if tuned is None else encoder(bank(rows.cpu().numpy()).to(dev))
            tokens = model.image_tokens(image_in)
            image = model.image_head(tokens.mean(1))
            gene_tokens, gene = model.gene_encoder(expression[rows])
            loss = contrastive_loss(image.float(), gene.float(), cfg.temperature)
            if reconstruct and epoch >= cfg.stage1_epochs:
                keep = token_mask(len(rows), tokens.shape[1], cfg.mask_ratio, gen).to(dev)
                rebuilt = model.reconstruct(tokens, keep, gene_tokens)
                loss = loss + reconstruction_loss(rebuilt.float(), tokens.float(), keep)
        return loss

    steps = epochs * int(np.ceil(n / cfg.batch_size))
    optimise(groups, epochs, batches, loss_of, lr=cfg.lr, weight_decay=cfg.weight_decay,
             compute=compute, total_steps=steps, desc="cmrcnet" if reconstruct else "contrastive", progress=progress)
    if tuned is not None:
        encoder.eval()
    model.eval()
    with torch.no_grad():
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:CHECK_SPOTS]
        image_in = (features[rows.to(dev)] if tuned is None else  # the encoder reads a batch at a time
                    torch.cat([encoder(bank(part.numpy()).to(dev)) for part in rows.split(cfg.batch_size)])).float()
    log_checks(model, image_in, expression[rows.to(dev)], cfg, seed, reconstruct and cfg.stage2_epochs > 0)
    return model


def log_checks(model: CMRCNet, image_in: torch.Tensor, expression: torch.Tensor, cfg: CMRCNetConfig, seed: int,
               stage2: bool) -> None:
    """What the fold's log says of the trained model, on training spots only: the image
    embedding's spread and, after stage 2, whether the reconstruction reads the genes and how
    much of the image side's gradient it gives."""
    with torch.no_grad():
        log.info("image embedding of %d training spots: effective rank %.1f of %d (a collapsing embedding "
                 "falls towards 1)", len(image_in), effective_rank(model.embed_image(image_in)), DIM)
        if not stage2:
            return
        own, shuffled = gene_reliance(model, image_in, expression, cfg.mask_ratio, seed)
    log.info("reconstruction loss on %d training spots: %.3f with their genes, %.3f with the genes shuffled "
             "across them (were they alike, the reconstruction would not be reading the genes)",
             len(image_in), own, shuffled)
    con, rec = image_side_gradients(model, image_in, expression, cfg, seed)
    log.info("gradient norm on the image tokens' weights over those spots: %.3f from the contrastive loss, %.3f "
             "from the reconstruction (%.0f%%): how much stage 2 shapes what embeds a test spot",
             con, rec, 100 * rec / max(con, 1e-12))


def gene_reliance(model: CMRCNet, image_in: torch.Tensor, expression: torch.Tensor, mask_ratio: float,
                  seed: int) -> tuple[float, float]:
    """L_rec of spots rebuilt from their own gene tokens and from another spot's (a permutation):
    what stage 2 takes from the genes. One mask for both, drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    tokens, genes = model.image_tokens(image_in), model.gene_encoder(expression)[0]
    keep = token_mask(len(tokens), tokens.shape[1], mask_ratio, gen).to(tokens.device)
    other = torch.randperm(len(tokens), generator=gen).to(tokens.device)
    own, shuffled = (reconstruction_loss(model.reconstruct(tokens, keep, g), tokens, keep).item()
                     for g in (genes, genes[other]))
    return own, shuffled


def image_side_gradients(model: CMRCNet, image_in: torch.Tensor, expression: torch.Tensor, cfg: CMRCNetConfig,
                         seed: int) -> tuple[float, float]:
    """|∇_W L_con| and |∇_W L_rec| on the image tokens' weights W, each summed over batches of
    the given spots (the trained model, dropout off, one mask per spot drawn from `seed`);
    torch.autograd.grad, so no parameter's .grad is touched."""
    gen = torch.Generator().manual_seed(seed)
    weight = model.tokens.weight
    totals = [torch.zeros_like(weight), torch.zeros_like(weight)]
    for rows in torch.arange(len(image_in)).split(cfg.batch_size):
        rows = rows.to(image_in.device)
        tokens = model.image_tokens(image_in[rows])
        gene_tokens, gene = model.gene_encoder(expression[rows])
        keep = token_mask(len(rows), tokens.shape[1], cfg.mask_ratio, gen).to(tokens.device)
        losses = (contrastive_loss(model.image_head(tokens.mean(1)), gene, cfg.temperature),
                  reconstruction_loss(model.reconstruct(tokens, keep, gene_tokens), tokens, keep))
        for total, loss in zip(totals, losses):
            total += torch.autograd.grad(loss, weight, retain_graph=True)[0]
    return totals[0].norm().item(), totals[1].norm().item()


def effective_rank(embedding: torch.Tensor) -> float:
    """exp of the entropy of the centred embedding's normalised singular values (Roy & Vetterli
    2007): how many directions the spots spread over; 1 when every spot embeds to one line, 0 to
    one point."""
    s = torch.linalg.svdvals(embedding - embedding.mean(0))
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
