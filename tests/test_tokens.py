import numpy as np
import pytest
import torch

from prdit.errors import ConfigError
from prdit.models.tokens import extract_tokens, halo, tile_tokens, token_grid


@pytest.mark.parametrize(
    "shape, patch, stride",
    [((16, 16, 16), 12, 8), ((32, 32, 32), 16, 8), ((16, 24, 32), 10, 8), ((12, 8, 16), 6, 4), ((8, 8, 8), 4, 4)],
)
def test_token_shapes(shape, patch, stride):
    x = torch.randn(2, 3, *shape)
    tokens = extract_tokens(x, patch, stride)
    grid = token_grid(shape, patch, stride)
    assert grid == tuple(n // stride for n in shape)
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], 3 * patch**3)


@pytest.mark.parametrize("patch, stride", [(12, 8), (14, 8), (6, 4), (5, 3), (4, 4)])
def test_tokens_match_reflect_padded_windows(patch, stride):
    """Every token is the [C, P, P, P] window of the reflect-padded volume at its grid position."""
    generator = torch.Generator().manual_seed(0)
    shape = (2 * stride, 3 * stride, stride)
    x = torch.randn(1, 2, *shape, generator=generator)
    pad = (patch - stride) // 2
    padded = np.pad(x.numpy(), [(0, 0), (0, 0)] + [(pad, pad)] * 3, mode="reflect")
    tokens = extract_tokens(x, patch, stride).numpy()
    grid = token_grid(shape, patch, stride)
    for index, (iz, iy, ix) in enumerate(np.ndindex(*grid)):  # z-major token order
        z, y, w = iz * stride, iy * stride, ix * stride
        window = padded[0, :, z : z + patch, y : y + patch, w : w + patch]
        np.testing.assert_array_equal(tokens[0, index], window.reshape(-1))


@pytest.mark.parametrize("patch, stride, channels", [(12, 8, 1), (16, 8, 2), (6, 4, 3), (8, 8, 1)])
def test_centre_blocks_tile_back_to_the_volume(patch, stride, channels):
    """Mapping each window to its centre S^3 block and tiling is the identity."""
    x = torch.randn(2, channels, 2 * stride, stride, 3 * stride)
    pad = (patch - stride) // 2
    tokens = extract_tokens(x, patch, stride)
    windows = tokens.reshape(*tokens.shape[:2], channels, patch, patch, patch)
    centres = windows[..., pad : pad + stride, pad : pad + stride, pad : pad + stride].reshape(*tokens.shape[:2], -1)
    grid = token_grid(x.shape[2:], patch, stride)
    torch.testing.assert_close(tile_tokens(centres, grid, stride), x, rtol=0, atol=0)


def test_tile_places_token_blocks_in_z_major_order():
    stride, grid = 2, (2, 3, 4)
    count = grid[0] * grid[1] * grid[2]
    tokens = torch.arange(count, dtype=torch.float32)[None, :, None].expand(1, count, stride**3)
    volume = tile_tokens(tokens, grid, stride)[0, 0]
    z, y, x = np.meshgrid(*(np.arange(g * stride) // stride for g in grid), indexing="ij")
    np.testing.assert_array_equal(volume.numpy(), (z * grid[1] + y) * grid[2] + x)


def test_tile_channel_layout():
    """The output token is [C_out, S, S, S] channel-major: channel c of the volume comes from slice c."""
    stride, grid = 2, (1, 1, 2)
    block = stride**3
    tokens = torch.cat([torch.zeros(1, 2, block), torch.ones(1, 2, block)], dim=2)  # [channel 0 | channel 1]
    volume = tile_tokens(tokens, grid, stride)
    assert volume.shape == (1, 2, 2, 2, 4)
    assert volume[:, 0].eq(0).all() and volume[:, 1].eq(1).all()


def test_tile_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="grid"):
        tile_tokens(torch.zeros(1, 7, 8), (2, 2, 2), 2)


def test_halo():
    assert halo(12, 8) == 2 and halo(16, 8) == 4 and halo(8, 8) == 0 and halo(6, 4) == 1


@pytest.mark.parametrize("patch, stride", [(11, 8), (6, 8), (4, 0)])
def test_bad_patch_stride_is_a_config_error(patch, stride):
    with pytest.raises(ConfigError, match=f"patch size {patch}"):
        halo(patch, stride)


def test_size_not_divisible_by_stride_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible by the token stride 8"):
        extract_tokens(torch.zeros(1, 1, 16, 20, 16), 12, 8)


def test_volume_smaller_than_halo_is_a_config_error():
    with pytest.raises(ConfigError, match="too small"):
        token_grid((2, 2, 2), 8, 2)
