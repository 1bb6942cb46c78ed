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
    """L_rec = mean over masked tokens and channels of (R − LN(Z))²: the masked image tokens,
    rebuilt through cross-attention to the gene tokens, against the unmasked tokens Z, each
    normalised over its channels (LN: LayerNorm without affine, MAE's normalised targets).

    Masked tokens only (MAE's choice: a visible token passes the residual path as it is). The
    target keeps its gradient: the masked queries carry no image content, so the target is the
    only way the reconstruction reaches Z = reshape(W f), the image side that embeds a test spot;
    through it W learns tokens the genes predict, as the paper's image encoder does. Normalised
    because Z is learnt: against raw Z, shrinking W's tokens towards zero would empty the loss
    without reading a gene; LN(Z) keeps each token's scale at 1. Its epsilon is negligible
    (LayerNorm's 1e-5 would let tokens of variance well below it normalise to ~0 and empty the
    loss again: at 1e-3 of the demo's initial scale, the loss fell to a twelfth)."""
    masked = ~keep
    if not masked.any():  # mask_ratio 0: nothing to rebuild (an empty mean would be NaN)
        return reconstructed.new_zeros(())
    target = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-12)
    return F.mse_loss(reconstructed[masked], target[masked])
