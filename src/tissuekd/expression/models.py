"""CMRCNet's modules over frozen foundation features (arXiv 2506.08854; its code builds on BLEEP).

Image side: a spot's standardised feature vector f (d) becomes T tokens Z = reshape(W f) (T x 256)
and, through BLEEP's projection head on their mean, the image embedding e_I (256).
Gene side: a self-normalising network h = AlphaDropout(SELU(W₁ y)) (2048 = 8 tokens x 256) on the
spot's normalised expression y; its tokens are G = reshape(h), its embedding e_G = W₂ h (256).
Reconstruction (stage 2): half of each spot's T tokens are masked, replaced by a learnt mask
token plus their position's embedding (Z_m), and rebuilt as R = Z_m + Attn(Q = Z_m W_q, K = G W_k,
V = G W_v), then R ← R + FF(LN(R)): queries from the masked image tokens, keys and values from
the gene tokens, with the residual path.

Why whole tokens (as MAE masks patches) and not entries: with half of every token's entries
zeroed, the per-token FF rebuilt the rest from the visible half, which the features' low rank
(effective rank ~27 of 1,024 on the demo) determines; on a demo fold, shuffling the gene tokens
across spots changed the trained reconstruction's loss by 3% (0.410 vs 0.421): the stage did not
use the genes. A masked token here is rebuilt from its position and the genes only (the image
tokens do not attend to each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIM = 256
TOKENS = 8


class ProjectionHead(nn.Module):
    """BLEEP's head: Linear -> GELU -> Linear -> Dropout, plus the residual, then LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int = DIM, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        return self.norm(self.drop(self.fc(F.gelu(p))) + p)


class GeneEncoder(nn.Module):
    """Self-normalising network (SELU + alpha-dropout): tokens (B, TOKENS, DIM) and embedding (B, DIM)."""

    def __init__(self, n_genes: int, dropout: float = 0.25):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_genes, TOKENS * DIM), nn.SELU(), nn.AlphaDropout(dropout))
        self.out = nn.Linear(TOKENS * DIM, DIM)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(y)
        return h.view(len(y), TOKENS, DIM), self.out(h)


class CrossModalReconstruction(nn.Module):
    """Rebuild masked image tokens from the gene tokens (cross-attention with the residual path)."""

    def __init__(self, heads: int = 4):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(DIM))
        self.position = nn.Parameter(torch.randn(TOKENS, DIM) * 0.02)
        self.attn = nn.MultiheadAttention(DIM, heads, batch_first=True)
        self.norm = nn.LayerNorm(DIM)
        self.ff = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """`tokens` (B, T, DIM); `keep` (B, T) bool, False where a token is masked; `genes` (B, T', DIM)."""
        masked = torch.where(keep[..., None], tokens, (self.mask_token + self.position).to(tokens.dtype))
        r = masked + self.attn(masked, genes, genes, need_weights=False)[0]
        return r + self.ff(self.norm(r))


class CMRCNet(nn.Module):
    def __init__(self, feature_dim: int, n_genes: int):
        super().__init__()
        self.tokens = nn.Linear(feature_dim, TOKENS * DIM)
        self.image_head = ProjectionHead(DIM)
        self.gene_encoder = GeneEncoder(n_genes)
        self.reconstruct = CrossModalReconstruction()

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        return self.tokens(features).view(len(features), TOKENS, DIM)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        """e_I (B, DIM): what a test patch is retrieved by."""
        return self.image_head(self.image_tokens(features).mean(1))

    def embed_genes(self, expression: torch.Tensor) -> torch.Tensor:
        """e_G (B, DIM): the retrieval bank's keys (training spots)."""
        return self.gene_encoder(expression)[1]
