import math

import pytest
import torch
import torch.nn as nn

from prdit.errors import CheckpointError, ConfigError
from prdit.models.prdit import PRDiT, TimestepEmbedder

TINY = dict(hidden_size=24, num_heads=4)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Replace the (partly zero) initial weights, as training would, so every path matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return module


def tiny(depth: int = 1, input_size=8, patch_size: int = 4, stride: int = 2, **kwargs) -> PRDiT:
    return PRDiT(input_size, patch_size, stride, depth, **TINY, **kwargs)


def inputs(shape=(2, 1, 8, 8, 8), seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.tensor([3.0, 700.0] * (shape[0] // 2) + [0.0] * (shape[0] % 2))


@pytest.mark.parametrize(
    "spatial, patch, stride, in_channels, out_channels",
    [((8, 8, 8), 4, 2, 1, 2), ((16, 16, 16), 10, 8, 1, 2), ((8, 12, 16), 6, 4, 2, 2), ((8, 8, 8), 4, 4, 1, 1)],
)
def test_output_shape(spatial, patch, stride, in_channels, out_channels):
    model = tiny(1, spatial, patch, stride, in_channels=in_channels, out_channels=out_channels)
    x, t = inputs((2, in_channels, *spatial))
    out = randomise(model)(x, t)
    assert out.shape == (2, out_channels * in_channels, *spatial) and out.dtype == x.dtype


def test_timestep_sinusoid():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = TimestepEmbedder.sinusoid(t, 256)
    k = 37
    freq = 10000 ** (-k / 128)
    torch.testing.assert_close(emb[:, k], torch.cos(t * freq))
    torch.testing.assert_close(emb[:, 128 + k], torch.sin(t * freq))


def test_scalar_timestep_broadcasts():
    model = randomise(tiny())
    x, _ = inputs()
    torch.testing.assert_close(model(x, torch.tensor(5.0)), model(x, torch.tensor([5.0, 5.0])))
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.zeros(3))


def test_fresh_models_predict_zero_and_parts_add_up():
    x, t = inputs()
    assert tiny(0)(x, t).eq(0).all() and tiny(2)(x, t).eq(0).all()
    model = randomise(tiny(2))
    coarse, fine = model(x, t, return_parts=True)
    torch.testing.assert_close(coarse + fine, model(x, t))
    stage1 = randomise(tiny(0))
    coarse, fine = stage1(x, t, return_parts=True)
    assert fine.eq(0).all() and coarse.shape == fine.shape
    torch.testing.assert_close(coarse, stage1(x, t), rtol=0, atol=0)


def test_fresh_stage2_equals_its_stage1_model():
    stage1 = randomise(tiny(0))
    stage2 = tiny(3)
    stage2.load_stage1_state_dict(stage1.state_dict())
    x, t = inputs()
    torch.testing.assert_close(stage2(x, t), stage1(x, t), rtol=0, atol=0)


def test_load_stage1_rejects_a_mismatched_checkpoint():
    with pytest.raises(CheckpointError, match="miss"):
        tiny(1).load_stage1_state_dict({})
    with pytest.raises(CheckpointError, match="do not fit"):
        tiny(1).load_stage1_state_dict(tiny(0, patch_size=6).state_dict())


def test_stage2_gradients_reach_only_the_dit_and_fine_head():
    model = randomise(tiny(2))
    model.freeze_local_denoiser()
    assert model.local_denoiser_frozen
    x, t = inputs()
    model(x, t).square().mean().backward()
    for name, p in model.named_parameters():
        trainable = name.startswith(("dit.", "fine_head."))
        assert p.requires_grad == trainable, name
        if trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    coarse, _ = model(x, t, return_parts=True)
    assert not coarse.requires_grad  # the frozen part ran under no_grad: no graph, no activations kept


def test_freezing_a_depth0_model_is_refused():
    with pytest.raises(ConfigError, match="depth 0"):
        tiny(0).freeze_local_denoiser()


def test_stage1_output_block_sees_only_its_window():
    """A voxel change moves exactly the blocks whose P^3 window (block + halo) contains the voxel."""
    model = randomise(tiny(0, input_size=16, patch_size=6, stride=2))
    x, t = inputs((1, 1, 16, 16, 16))
    changed = x.clone()
    changed[0, 0, 7, 8, 9] += 1.0
    moved = (model(changed, t[:1]) - model(x, t[:1])).abs().amax(1)[0] > 0  # [D, H, W]
    halo = 2
    for axis, v in enumerate((7, 8, 9)):
        index = torch.arange(16)
        block_start = index // 2 * 2
        inside = (block_start - halo <= v) & (v < block_start + 2 + halo)
        profile = moved.any(dim=tuple(a for a in range(3) if a != axis))
        assert torch.equal(profile, inside), axis


def test_state_dict_of_32_model_runs_at_64():
    small = randomise(PRDiT(32, 6, 4, 1, **TINY))
    assert not any("pos" in key for key in small.state_dict())
    large = PRDiT(64, 6, 4, 1, **TINY)
    large.load_state_dict(small.state_dict())
    x = torch.randn(1, 1, 64, 64, 64)
    t = torch.tensor([100.0])
    out = large(x, t)
    assert out.shape == (1, 2, 64, 64, 64) and torch.isfinite(out).all()
    torch.testing.assert_close(small(x, t), out)  # the small model recomputes its code for the 16^3 grid


def test_activation_checkpointing_gives_the_same_gradients():
    x, t = inputs()
    grads = []
    for use_checkpoint in (False, True):
        model = randomise(tiny(2, grad_checkpoint=use_checkpoint))
        model(x, t).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_bf16_autocast_forward_and_backward():
    model = randomise(tiny(2))
    x, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t)
    assert low.dtype == torch.float32
    low.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    full = model(x, t)
    assert (low - full).abs().max() < 0.05 * full.abs().max()


def test_invalid_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of 8"):
        PRDiT(20, 12, 8)
    with pytest.raises(ConfigError, match="depth"):
        PRDiT(16, 12, 8, depth=-1)
    with pytest.raises(ValueError, match="1, D, H, W"):
        tiny()(torch.zeros(1, 2, 8, 8, 8), torch.zeros(1))


def test_attributes():
    model = tiny(2, name="PRDiT-X/4/2")
    assert (model.name, model.depth, model.patch_size, model.stride, model.hidden_size) == ("PRDiT-X/4/2", 2, 4, 2, 24)
    assert model.input_size == 8 and model.token_dim == 4**3
    assert math.isclose(model.time_embed.linear.weight.std().item(), 0.02, rel_tol=0.2)
