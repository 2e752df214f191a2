"""Volume <-> token conversion: overlapping P^3 input windows, non-overlapping S^3 output blocks.

Every token reads a P^3 window (the S^3 block it predicts plus a (P - S) / 2 voxel halo on every face)
and writes only its own S^3 block, so the overlap is on the input side and the output tiles the volume
exactly. The volume is reflect-padded by the halo so that border blocks see mirrored anatomy rather than a
constant, which would put an artificial intensity edge at every face.

Layouts (they define the meaning of the token features, so they must not change):
  input token  [C, P, P, P] flattened (channel-major, then z, y, x);
  output token [C_out, S, S, S] flattened likewise;
  token order  z-major over the token grid (G_d, G_h, G_w), i.e. token index = (i_z * G_h + i_y) * G_w + i_x.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from prdit.errors import ConfigError

Grid = tuple[int, int, int]


def halo(patch_size: int, stride: int) -> int:
    """Reflect padding (P - S) / 2 on every face; checks that the window fits the stride."""
    if stride < 1 or patch_size < stride or (patch_size - stride) % 2:
        raise ConfigError(
            f"patch size {patch_size} with stride {stride}: need patch >= stride >= 1 and an even "
            f"difference (the halo is (patch - stride) / 2 voxels per face); for example 12/8 or 6/4"
        )
    return (patch_size - stride) // 2


def token_grid(spatial_shape: Sequence[int], patch_size: int, stride: int) -> Grid:
    """Token grid (D/S, H/S, W/S) of a [D, H, W] volume; checks divisibility and the reflect halo."""
    pad = halo(patch_size, stride)
    shape = tuple(int(n) for n in spatial_shape)
    if len(shape) != 3 or any(n % stride for n in shape):
        raise ConfigError(
            f"volume size {shape} is not divisible by the token stride {stride}; "
            f"use a size that is a multiple of {stride} (crop or pad the volume)"
        )
    if any(n <= pad for n in shape):
        raise ConfigError(f"volume size {shape} is too small for a reflect halo of {pad} voxels")
    return shape[0] // stride, shape[1] // stride, shape[2] // stride


def extract_tokens(x: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, L, C * P^3]: reflect-pad by the halo, then P^3 windows with stride S.

    The windows are a strided view of the padded volume (``Tensor.unfold``); the only copies are the
    padding and the final reshape into token rows.
    """
    grid = token_grid(x.shape[2:], patch_size, stride)
    pad = halo(patch_size, stride)
    if pad:
        x = F.pad(x, (pad,) * 6, mode="reflect")
    windows = x.unfold(2, patch_size, stride).unfold(3, patch_size, stride).unfold(4, patch_size, stride)
    # [B, C, Gd, Gh, Gw, P, P, P] -> [B, Gd, Gh, Gw, C, P, P, P]
    batch, channels = x.shape[:2]
    return windows.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(batch, grid[0] * grid[1] * grid[2], channels * patch_size**3)


def tile_tokens(tokens: torch.Tensor, grid: Grid, stride: int) -> torch.Tensor:
    """[B, L, C_out * S^3] -> [B, C_out, G_d * S, G_h * S, G_w * S]: place each token's block on the grid."""
    batch, length, width = tokens.shape
    if length != grid[0] * grid[1] * grid[2] or width % stride**3:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not tile a {grid} grid of {stride}^3 blocks")
    channels = width // stride**3
    blocks = tokens.reshape(batch, *grid, channels, stride, stride, stride)
    # [B, Gd, Gh, Gw, C, S, S, S] -> [B, C, Gd, S, Gh, S, Gw, S]
    volume = blocks.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return volume.reshape(batch, channels, grid[0] * stride, grid[1] * stride, grid[2] * stride)
