import torch
import torch.nn as nn

from prdit.models.local_denoiser import NORM_EPS, LocalDenoiser, SwiGLU, modulate

DIM, OUT = 24, 16


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Replace the (partly zero) initial weights so every path of the network is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return module


def layer_norm(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_modulate_is_per_sample_shift_and_scale():
    x = torch.randn(2, 5, 3)
    shift, scale = torch.randn(2, 3), torch.randn(2, 3)
    out = modulate(x, shift, scale)
    for b in range(2):
        torch.testing.assert_close(out[b], x[b] * (1 + scale[b]) + shift[b])


def test_swiglu_formula():
    mlp = randomise(SwiGLU(DIM, 2 * DIM))
    x = torch.randn(3, DIM)
    gate, value = x @ mlp.w12.weight[: 2 * DIM].T, x @ mlp.w12.weight[2 * DIM :].T
    gate, value = gate + mlp.w12.bias[: 2 * DIM], value + mlp.w12.bias[2 * DIM :]
    hidden = layer_norm(torch.nn.functional.silu(gate) * value, eps=1e-5) * mlp.norm.weight + mlp.norm.bias
    torch.testing.assert_close(mlp(x), hidden @ mlp.w3.weight.T + mlp.w3.bias, rtol=1e-5, atol=1e-5)


def test_fresh_denoiser_outputs_zero():
    denoiser = LocalDenoiser(DIM, OUT)
    out = denoiser(torch.randn(2, 7, DIM), torch.randn(2, DIM))
    assert out.shape == (2, 7, OUT) and out.eq(0).all()


def test_forward_follows_the_architecture():
    """LN -> mod -> SwiGLU -> LN -> mod -> SwiGLU -> + token -> mod -> Linear, written out by hand."""
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    tokens, cond = torch.randn(2, 5, DIM), torch.randn(2, DIM)
    mod = denoiser.modulation[1](torch.nn.functional.silu(cond))
    shift1, scale1, shift2, scale2, shift3, scale3 = (mod[:, None, i * DIM : (i + 1) * DIM] for i in range(6))

    def apply(x, shift, scale):
        return x * (1 + scale) + shift

    h = denoiser.mlp1(apply(layer_norm(tokens), shift1, scale1))
    h = denoiser.mlp2(apply(layer_norm(h), shift2, scale2))
    expected = denoiser.out(apply(h + tokens, shift3, scale3))
    torch.testing.assert_close(denoiser(tokens, cond), expected, rtol=1e-5, atol=1e-5)


def test_tokens_are_denoised_independently():
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    tokens, cond = torch.randn(1, 6, DIM), torch.randn(1, DIM)
    out = denoiser(tokens, cond)
    changed = tokens.clone()
    changed[0, 2] += 1.0
    diff = (denoiser(changed, cond) - out).abs().amax(-1)[0]
    assert diff[2] > 0 and diff[[0, 1, 3, 4, 5]].eq(0).all()
    order = torch.randperm(6)
    torch.testing.assert_close(denoiser(tokens[:, order], cond), out[:, order])


def test_skip_carries_absolute_intensity():
    """Two tokens equal up to an offset normalise alike, but the skip keeps the outputs apart."""
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    token = torch.randn(1, 1, DIM)
    out = denoiser(torch.cat([token, token + 3.0], dim=1), torch.randn(1, DIM))
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_activation_checkpointing_gives_the_same_gradients():
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    tokens, cond = torch.randn(2, 5, DIM), torch.randn(2, DIM)
    grads = []
    for use_checkpoint in (False, True):
        denoiser.zero_grad()
        denoiser.grad_checkpoint = use_checkpoint
        denoiser(tokens, cond).square().sum().backward()
        grads.append([p.grad.clone() for p in denoiser.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_runs_under_cpu_bf16_autocast():
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    tokens, cond = torch.randn(2, 5, DIM), torch.randn(2, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = denoiser(tokens, cond)
    full = denoiser(tokens, cond)
    assert torch.isfinite(low).all()
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()
