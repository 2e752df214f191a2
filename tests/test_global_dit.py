import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prdit.models import global_dit
from prdit.models.global_dit import (
    Attention,
    DiTBlock,
    GlobalDiT,
    PatchEmbed,
    attention,
    position_code,
    takes_explicit_attention,
)

TOKEN_DIM, HIDDEN, HEADS, OUT = 27, 24, 4, 16


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return module


def make_dit(depth: int = 2, grid=(2, 2, 2), **kwargs) -> GlobalDiT:
    return GlobalDiT(TOKEN_DIM, HIDDEN, HEADS, depth, OUT, grid, **kwargs)


@pytest.mark.parametrize("grid, dim", [((2, 3, 4), 24), ((4, 4, 4), 30), ((3, 1, 2), 128)])
def test_position_code_formula(grid, dim):
    code = position_code(grid, dim)
    n = dim // 6
    assert code.shape == (grid[0] * grid[1] * grid[2], dim) and code.dtype == torch.float32
    for token, (iz, iy, ix) in enumerate(torch.cartesian_prod(*(torch.arange(g) for g in grid)).tolist()):
        for axis, (i, size) in enumerate([(ix, grid[2]), (iy, grid[1]), (iz, grid[0])]):  # x, y, z blocks
            for k in range(n):
                top = 0.95 * size / 2
                cycles = top ** (k / (n - 1)) if n > 1 else 1.0  # log-spaced from 1 to 0.95 G / 2
                angle = 2 * math.pi * (i + 0.5) / size * cycles
                assert code[token, 2 * axis * n + k].item() == pytest.approx(math.sin(angle), abs=1e-5)
                assert code[token, (2 * axis + 1) * n + k].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert code[:, 6 * n :].eq(0).all()


def test_position_code_tells_every_token_apart():
    code = position_code((4, 4, 4), 48)
    distances = torch.cdist(code, code) + torch.eye(len(code)) * 1e3
    assert distances.min() > 0.1


def test_patch_embed_is_mlp_plus_skip_then_layernorm():
    embed = randomise(PatchEmbed(TOKEN_DIM, HIDDEN))
    x = torch.randn(2, 3, TOKEN_DIM)
    expected = nn.functional.layer_norm(embed.mlp(x) + x @ embed.skip.weight.T, (HIDDEN,), embed.norm.weight, embed.norm.bias, 1e-5)
    torch.testing.assert_close(embed(x), expected)
    assert embed.skip.bias is None


def test_sdpa_attention_equals_explicit_softmax_attention():
    attention = randomise(Attention(HIDDEN, HEADS))
    x = torch.randn(2, 10, HIDDEN)
    head_dim = HIDDEN // HEADS
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(HIDDEN, dim=-1)
    q, k, v = (y.reshape(2, 10, HEADS, head_dim).transpose(1, 2) for y in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(2, 10, HIDDEN)
    torch.testing.assert_close(attention(x), attention.proj(out), rtol=1e-5, atol=1e-5)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("sharpness", [1.0, 4.0])
def test_explicit_bf16_attention_is_as_accurate_as_bf16_allows(sharpness):
    """Outputs and all three gradients against float64, beside SDPA's own bf16 kernel on the same inputs;
    ``sharpness`` scales the queries (peaked attention, where rounded scores matter most)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(2, 4, 64, 16, generator=generator) for _ in range(4))
    q = q * sharpness
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*exact).backward(grad.double())
    want_out = F.scaled_dot_product_attention(*(t.detach() for t in exact))
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    assert takes_explicit_attention(low[0], low[1])
    out = attention(*low)
    out.backward(grad.bfloat16())
    sdpa = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    sdpa_out = F.scaled_dot_product_attention(*sdpa)
    sdpa_out.backward(grad.bfloat16())
    bf16_epsilon = 2.0**-8
    assert out.dtype == torch.bfloat16
    assert relative_error(out, want_out) < 3 * max(relative_error(sdpa_out, want_out), bf16_epsilon)
    for mine, kernel, reference in zip(low, sdpa, exact):
        assert relative_error(mine.grad, reference.grad) < 3 * max(relative_error(kernel.grad, reference.grad), bf16_epsilon)


def test_attention_is_explicit_only_for_short_bf16_sequences_on_the_cpu(monkeypatch):
    def shape(length: int, dtype=torch.bfloat16) -> torch.Tensor:
        return torch.zeros(2, 4, length, 8, dtype=dtype)

    largest = int((global_dit.EXPLICIT_ATTENTION_SCORES / 8) ** 0.5)  # 2 x 4 x L^2 scores
    assert takes_explicit_attention(shape(largest), shape(largest))
    assert not takes_explicit_attention(shape(largest + 1), shape(largest + 1))
    assert not takes_explicit_attention(shape(64, torch.float32), shape(64, torch.float32))
    assert not takes_explicit_attention(shape(64).to("meta"), shape(64).to("meta"))
    # fp32 (and long bf16 sequences) go to SDPA, whose result the explicit product reproduces in fp32
    calls = []
    monkeypatch.setattr(global_dit.F, "scaled_dot_product_attention", lambda *args: calls.append(args) or args[2])
    attention(shape(64, torch.float32), shape(64, torch.float32), shape(64, torch.float32))
    attention(shape(64), shape(64), shape(64))
    assert len(calls) == 1 and calls[0][0].dtype == torch.float32


def test_fresh_block_is_identity_and_fresh_dit_outputs_zero():
    dit = make_dit()
    x, cond = torch.randn(2, 8, HIDDEN), torch.randn(2, HIDDEN)
    for block in dit.blocks:
        torch.testing.assert_close(block(x, cond), x, rtol=0, atol=0)
    out = dit(torch.randn(2, 8, TOKEN_DIM), cond, (2, 2, 2))
    assert out.shape == (2, 8, OUT) and out.eq(0).all()


def test_block_uses_gated_residuals():
    block = randomise(DiTBlock(HIDDEN, HEADS))
    x, cond = torch.randn(2, 8, HIDDEN), torch.randn(2, HIDDEN)
    with torch.no_grad():
        block.adaLN_modulation[1].weight.zero_()
        block.adaLN_modulation[1].bias.zero_()
        block.adaLN_modulation[1].bias[2 * HIDDEN : 3 * HIDDEN] = 1.0  # attention gate open, MLP gate shut
    y = block.norm1(x)
    torch.testing.assert_close(block(x, cond), x + block.attn(y))


def test_position_code_is_not_saved_and_follows_the_input_grid():
    dit = randomise(make_dit(grid=(2, 2, 2)))
    assert not any("pos" in key for key in dit.state_dict())
    cond = torch.randn(1, HIDDEN)
    tokens = torch.randn(1, 27, TOKEN_DIM)
    out = dit(tokens, cond, (3, 3, 3))  # a grid it was not built for
    fresh = make_dit(grid=(3, 3, 3))
    fresh.load_state_dict(dit.state_dict())
    torch.testing.assert_close(out, fresh(tokens, cond, (3, 3, 3)))
    # the grid matters: the same tokens read as a 1 x 3 x 9 grid give another answer
    assert not torch.allclose(out, dit(tokens, cond, (1, 3, 9)))


def test_activation_checkpointing_gives_the_same_gradients():
    dit = randomise(make_dit())
    tokens, cond = torch.randn(2, 8, TOKEN_DIM), torch.randn(2, HIDDEN)
    grads = []
    for use_checkpoint in (False, True):
        dit.zero_grad()
        dit.grad_checkpoint = use_checkpoint
        dit(tokens, cond, (2, 2, 2)).square().sum().backward()
        grads.append([p.grad.clone() for p in dit.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_runs_under_cpu_bf16_autocast():
    dit = randomise(make_dit())
    tokens, cond = torch.randn(2, 8, TOKEN_DIM), torch.randn(2, HIDDEN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dit(tokens, cond, (2, 2, 2))
    full = dit(tokens, cond, (2, 2, 2))
    assert torch.isfinite(low).all()
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize("gain", [0.1, 1.0])
def test_linear_layers_start_at_the_xavier_scale_of_their_gain(gain):
    # The paper's stage 2 re-initialises every Linear with xavier gain 0.1: std = gain * sqrt(2 / (fan_in + fan_out)).
    torch.manual_seed(0)
    dit = GlobalDiT(216, 192, 6, 2, 128, (2, 2, 2), init_gain=gain)
    for layer in (dit.blocks[0].attn.qkv, dit.blocks[1].mlp[0], dit.patch_embed.mlp[2]):
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.std().item() == pytest.approx(gain * math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    fan_out, fan_in = dit.patch_embed.skip.weight.shape  # the skip is 0.1 whatever the gain
    assert dit.patch_embed.skip.weight.std().item() == pytest.approx(0.1 * math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
