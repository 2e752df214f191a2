"""Stage 1: the local denoiser, an adaptive SwiGLU MLP applied to every token on its own.

Each raw P^3 token (no learned projection in front) goes through

    LN -> modulate -> SwiGLU -> LN -> modulate -> SwiGLU -> + token -> modulate -> Linear(D, S^3 * out)

with shift/scale (no gates) from the time condition. There is deliberately no LayerNorm after the
global skip: the first LayerNorm removes each token's mean and scale, and the skip is the only path that
carries the absolute intensity of the block to the output.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prdit.models.linear import Linear

NORM_EPS = 1e-6
# The affine LayerNorms (SwiGLU hidden layer, DiT patch embedding) keep torch's default eps, as the paper's code
# (timm's SwiGLU, nn.LayerNorm) does: with 1e-6 a small-width model (e.g. XS/4, 64-d tokens) drifts by 5e-5.
AFFINE_NORM_EPS = 1e-5
# Token groups of the checkpointed local denoiser. The backward's recomputed part is 1/CHECKPOINT_CHUNKS of the
# hidden activations (~15 values per token and raw token value D in fp32); with 8 it is about what stays anyway
# (the tokens and the outputs, ~2 values per token and D), so more groups would save little more while
# shrinking every group's matmuls (at 128^3, stride 8: 512 tokens per group and sample).
CHECKPOINT_CHUNKS = 8


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift with per-sample [B, D] shift and scale over [B, L, D] tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class SwiGLU(nn.Module):
    """SwiGLU MLP with a LayerNorm on the gated hidden layer: W3(LN(silu(W1 x) * W2 x)).

    W1 and W2 are one fused Linear(D, 2 * hidden) (one matmul instead of two).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = Linear(dim, 2 * hidden)
        self.norm = nn.LayerNorm(hidden, eps=AFFINE_NORM_EPS)
        self.w3 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.norm(F.silu(gate) * value))


class LocalDenoiser(nn.Module):
    """Per-token adaptive MLP: [B, L, D] tokens and a [B, D] condition -> [B, L, out_dim]."""

    def __init__(self, token_dim: int, out_dim: int, grad_checkpoint: bool = False) -> None:
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.norm1 = nn.LayerNorm(token_dim, elementwise_affine=False, eps=NORM_EPS)
        self.mlp1 = SwiGLU(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim, elementwise_affine=False, eps=NORM_EPS)
        self.mlp2 = SwiGLU(token_dim, token_dim)
        self.modulation = nn.Sequential(nn.SiLU(), Linear(token_dim, 6 * token_dim))
        self.out = Linear(token_dim, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Identity modulation and a zero output: a fresh denoiser predicts 0 for both heads.
        for layer in (self.modulation[-1], self.out):
            nn.init.zeros_(cast(nn.Linear, layer).weight)
            nn.init.zeros_(cast(nn.Linear, layer).bias)

    def _denoise(self, tokens: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """The whole per-token function on [B, l, D] tokens (any l) with the [B, 6 D] modulation."""
        shift1, scale1, shift2, scale2, shift3, scale3 = modulation.chunk(6, dim=-1)
        h = self.mlp1(modulate(self.norm1(tokens), shift1, scale1))
        h = self.mlp2(modulate(self.norm2(h), shift2, scale2))
        return self.out(modulate(h + tokens, shift3, scale3))

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        modulation = self.modulation(cond)
        if not (self.grad_checkpoint and torch.is_grad_enabled()):
            return self._denoise(tokens, modulation)
        # Every token is denoised on its own, so the tokens are checkpointed in CHECKPOINT_CHUNKS groups: the
        # forward keeps only the tokens and the outputs, and the backward recomputes one group at a time (the
        # autograd engine finishes each group's nodes before the next), so one group's hidden layers are alive
        # instead of all of them. One region over all tokens would recompute them all at once: no saving.
        chunks = torch.tensor_split(tokens, min(CHECKPOINT_CHUNKS, tokens.shape[1]), dim=1)
        return torch.cat([checkpoint(self._denoise, chunk, modulation, use_reentrant=False) for chunk in chunks], dim=1)
