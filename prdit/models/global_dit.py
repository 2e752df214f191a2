"""Stage 2: the global residual DiT over the same raw tokens as the local denoiser.

Patch embed (MLP + small linear skip, then LayerNorm) -> fixed 3D sin/cos position code -> DiT blocks with
adaLN-Zero -> final adaLN layer. The final linear is zero-initialised, so a fresh DiT adds exactly 0 to the
local denoiser's prediction. No weight depends on the number of tokens: the position code is recomputed for
whatever token grid the input has, which is what lets a 128^3 checkpoint run at 256^3.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prdit.models.linear import Linear
from prdit.models.local_denoiser import AFFINE_NORM_EPS, NORM_EPS, modulate
from prdit.models.tokens import Grid


def position_code(grid: Grid, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 3D sin/cos code [G_d * G_h * G_w, dim] for a token grid (z-major token order).

    Per axis with G tokens: coordinates (i + 0.5) / G in (0, 1), dim // 6 frequencies log-spaced from 1
    to 0.95 * G / 2 cycles (just under the grid's Nyquist), angles 2 pi f u. Layout per token:
    [sin x, cos x, sin y, cos y, sin z, cos z], each dim // 6 wide; when dim is not a multiple of 6
    (L: 1024, T: 128) the last dim % 6 channels are zero.
    """
    n_freq = dim // 6
    axes = []
    for size in (grid[2], grid[1], grid[0]):  # x, y, z
        coord = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        cycles = torch.exp(torch.linspace(0.0, math.log(0.95 * size / 2), n_freq, dtype=torch.float64))
        angles = 2 * math.pi * coord[:, None] * cycles[None, :]
        axes.append(torch.cat([angles.sin(), angles.cos()], dim=1))
    code_x, code_y, code_z = axes
    shape = (*grid, 2 * n_freq)
    code = torch.cat(
        [
            code_x[None, None, :, :].expand(shape),
            code_y[None, :, None, :].expand(shape),
            code_z[:, None, None, :].expand(shape),
        ],
        dim=-1,
    ).reshape(-1, 6 * n_freq)
    code = F.pad(code, (0, dim - 6 * n_freq))
    return code.to(device=device, dtype=torch.float32)


class PatchEmbed(nn.Module):
    """Raw token [D] -> hidden [H]: MLP(D -> 4H -> H, GELU-tanh) plus a bias-free linear skip, then LayerNorm."""

    def __init__(self, token_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            Linear(token_dim, 4 * hidden_size), nn.GELU(approximate="tanh"), Linear(4 * hidden_size, hidden_size)
        )
        self.skip = Linear(token_dim, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size, eps=AFFINE_NORM_EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(tokens) + self.skip(tokens))


# On a CPU without AMX, SDPA's bf16 flash kernel runs no faster than its fp32 one (7.1 against 8.0 ms forward at
# [8, 4, 512, 32], the demo's stage 2), while the explicit softmax(Q K^T / sqrt(d)) V on oneDNN's bf16 matmuls took
# 3.5 ms forward and 9.6 against 24.3 ms forward and backward (2.5x; [2, 12, 512, 64]: 2.8x). It holds the score
# matrix (B x heads x L^2) instead of streaming it, so it is taken only while that stays small: up to
# EXPLICIT_ATTENTION_SCORES elements (32 MiB in bf16; the demo's 8.4 M; a 128^3 volume's 4096 tokens take the
# flash kernel). Its scores are rounded to bf16 before the softmax (which computes in fp32): against a float64
# reference its relative error was 5.8e-3 where the flash kernel's was 3.9e-3, both of bf16's order (2^-8 = 3.9e-3).
# fp32 and CUDA always take SDPA.
EXPLICIT_ATTENTION_SCORES = 2**24


def takes_explicit_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`attention` computes these [B, heads, L, d] queries and keys explicitly (see above)."""
    batch, heads, length, _ = q.shape
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and batch * heads * length * k.shape[2] <= EXPLICIT_ATTENTION_SCORES


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, L, d] tensors: torch SDPA (flash / memory-efficient kernels), or
    for short bf16 sequences on a CPU the explicit product, which is faster there."""
    if takes_explicit_attention(q, k):
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v)  # no mask: keeps the fused kernels eligible


class Attention(nn.Module):
    """Multi-head self-attention (:func:`attention`)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero: gated, modulated attention and MLP (ratio 4, GELU-tanh)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = nn.Sequential(
            Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(approximate="tanh"),
            Linear(mlp_ratio * hidden_size, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm -> adaLN shift/scale -> Linear(H, out_dim)."""

    def __init__(self, hidden_size: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 2 * hidden_size))
        self.linear = Linear(hidden_size, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class GlobalDiT(nn.Module):
    """[B, L, D] raw tokens on a token grid and a [B, H] condition -> [B, L, out_dim] residual."""

    def __init__(
        self,
        token_dim: int,
        hidden_size: int,
        num_heads: int,
        depth: int,
        out_dim: int,
        grid: Grid,
        grad_checkpoint: bool = False,
        init_gain: float = 0.1,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.grad_checkpoint = grad_checkpoint
        self.patch_embed = PatchEmbed(token_dim, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, out_dim)
        # Cached code for the grid the model was built for; other grids get theirs computed on the fly.
        self.pos_grid = tuple(grid)
        self.register_buffer("pos_embed", position_code(grid, hidden_size), persistent=False)
        self._init_weights(init_gain)

    def _init_weights(self, gain: float) -> None:
        # Xavier with gain 0.1 by default, as the paper's stage 2 (it re-initialises every Linear with gain 0.1
        # before loading the stage-1 weights): the residual DiT starts 10x quieter than a plain DiT.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # The linear skip gives every raw voxel a direct route into the embedding but starts 10x smaller than
        # the MLP path, so early training is driven by the MLP features.
        nn.init.xavier_uniform_(self.patch_embed.skip.weight, gain=0.1)
        # adaLN-Zero: every block starts as the identity and the output layer as zero.
        last_modulations = [cast(nn.Sequential, block.adaLN_modulation)[-1] for block in self.blocks] + [self.final_layer.adaLN_modulation[-1]]
        for layer in (*last_modulations, self.final_layer.linear):
            nn.init.zeros_(cast(nn.Linear, layer).weight)
            nn.init.zeros_(cast(nn.Linear, layer).bias)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, grid: Grid, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``extra`` [B, L, H]: added to the token embedding (a conditional model's label tokens)."""
        pos = self.pos_embed if tuple(grid) == self.pos_grid else position_code(grid, self.hidden_size, tokens.device)
        x = self.patch_embed(tokens) + pos
        if extra is not None:
            x = x + extra.to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, use_reentrant=False)
            else:
                x = block(x, cond)
        return self.final_layer(x, cond)
