"""CMRCNet's two losses (arXiv 2506.08854; its contrastive term is BLEEP's, bowang-lab/BLEEP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image: torch.Tensor, gene: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP's CLIP-style loss with intra- and cross-modal similarity matrices.

    For a batch of B spots with image embeddings I and gene embeddings G (B, 256, not normalised):

        logits  = G Iᵀ / τ
        targets = softmax_row((I Iᵀ + G Gᵀ) / 2 · τ)
        L = mean_b [ CE(logits_b, targets_b) + CE(logitsᵀ_b, targetsᵀ_b) ] / 2,
        CE(p, t) = −Σ_j t_j log softmax(p)_j

    The soft targets let two spots that look alike and express alike both count as matches
    (a hard diagonal would push neighbouring spots of one tissue apart). τ = 1.0 in the paper.
    """
    logits = gene @ image.T / temperature
    targets = F.softmax((image @ image.T + gene @ gene.T) / 2 * temperature, dim=-1)
    genes_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(1)
    images_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((genes_loss + images_loss) / 2).mean()


def reconstruction_loss(reconstructed: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """L_rec = mean over masked tokens and channels of (R − sg(Z))²: the masked image tokens,
    rebuilt through cross-attention to the gene tokens, against the unmasked tokens Z.

    Masked tokens only (MAE's choice: a visible token passes the residual path as it is). sg is
    stop-gradient: Z = reshape(W f) is learnt, and a target the loss can move lets it shrink or
    flatten W's tokens instead of reading them from the genes; the contrastive term alone shapes W."""
    masked = ~keep
    if not masked.any():  # mask_ratio 0: nothing to rebuild (an empty mean would be NaN)
        return reconstructed.new_zeros(())
    return F.mse_loss(reconstructed[masked], tokens.detach()[masked])
