import weakref

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from prdit.models import local_denoiser
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


def test_checkpointing_gives_the_same_outputs_and_gradients():
    """Token groups of any size (L = 5 < 8 groups, 13 and 203 not divisible by 8): the same function exactly."""
    torch.manual_seed(0)
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    for length in (5, 13, 203):
        tokens, cond = torch.randn(2, length, DIM, requires_grad=True), torch.randn(2, DIM, requires_grad=True)
        outputs, grads = [], []
        for use_checkpoint in (False, True):
            denoiser.zero_grad()
            denoiser.grad_checkpoint = use_checkpoint
            out = denoiser(tokens, cond)
            weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a different gradient for every output
            inputs = [tokens, cond, *denoiser.parameters()]
            outputs.append(out.detach())
            grads.append(torch.autograd.grad((out * weights).sum(), inputs))
        assert torch.equal(*outputs)  # a token's rows go through the same kernels in a group as among all tokens
        for plain, checkpointed in zip(*grads):  # weight gradients: a sum over groups, in another order
            torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-4)


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensor storages created under it (forward and backward, gradients too)."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.ignored = {id(t.untyped_storage()) for t in existing}
        self.tracked: set[int] = set()
        self.live = self.peak = 0

    def _freed(self, key: int, nbytes: int) -> None:
        self.tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()  # one Python object per storage, alive as long as the storage
                key = id(storage)
                if key not in self.tracked and key not in self.ignored:
                    self.tracked.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
                    self.peak = max(self.peak, self.live)
        return out


def test_checkpointing_recomputes_one_token_group_at_a_time(monkeypatch):
    """The training step's peak (forward + backward) falls to about 1/8 of the hidden layers, which one region
    over all tokens (CHECKPOINT_CHUNKS = 1) would not do: its backward rebuilds them all at once."""
    torch.manual_seed(0)
    denoiser = randomise(LocalDenoiser(64, 32))
    tokens, cond = torch.randn(2, 400, 64), torch.randn(2, 64)

    def peak(use_checkpoint: bool) -> int:
        denoiser.zero_grad(set_to_none=True)
        denoiser.grad_checkpoint = use_checkpoint
        with LiveBytes([tokens, cond, *denoiser.parameters()]) as mode:
            denoiser(tokens, cond).square().sum().backward()
        return mode.peak

    plain, grouped = peak(False), peak(True)
    monkeypatch.setattr(local_denoiser, "CHECKPOINT_CHUNKS", 1)
    one_region = peak(True)
    hidden = 2 * 400 * 15 * 64 * 4  # ~15 fp32 values per token and unit of D: the two MLPs' hidden layers
    assert plain > hidden and one_region > 0.9 * plain  # the measure sees the activations; one region saves nothing
    assert grouped < 0.3 * plain


def test_runs_under_cpu_bf16_autocast():
    denoiser = randomise(LocalDenoiser(DIM, OUT))
    tokens, cond = torch.randn(2, 5, DIM), torch.randn(2, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = denoiser(tokens, cond)
    full = denoiser(tokens, cond)
    assert torch.isfinite(low).all()
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()
