"""Official PRDiT state dicts <-> prdit: names and shapes for every official size, exact round trips, and the
official network's output computed from an official-format state dict.

The official code is not needed here: its parameter names and shapes are written down below (read from
github Fredy-Zhang/PRDiT at 6a75fd2: models/models.py, local_denoiser.py, global_refiner.py and timm's SwiGLU
and Mlp), and ``official_forward`` evaluates that layout directly (tokens of the raw windows, SwiGLU with
separate gate/value matrices, channel-last output tokens).
"""

from __future__ import annotations

import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prdit.errors import CheckpointError
from prdit.models import create_model
from prdit.models.official import (
    SPECIAL_STRIDES,
    from_official,
    is_official_state_dict,
    official_spec,
)
from prdit.models.registry import parse_model_name

SIZES = {"XS": 192, "S": 384, "B": 768, "L": 1024, "XL": 1152}


def official_shapes(hidden: int, patch: int, stride: int, depth: int, in_channels: int = 1) -> dict[str, tuple]:
    """Every parameter of the official PRDiT with ``learn_sigma`` (two heads), as its code names it."""
    token = in_channels * patch**3
    out = 2 * in_channels * stride**3
    shapes: dict[str, tuple] = {
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.coarse_head.weight": (token, hidden),
        "t_embedder.coarse_head.bias": (token,),
    }
    for mlp in ("mlp1", "mlp2"):
        for part in ("fc1_g", "fc1_x", "fc2"):
            shapes[f"coarse.mlp_denoise.{mlp}.{part}.weight"] = (token, token)
            shapes[f"coarse.mlp_denoise.{mlp}.{part}.bias"] = (token,)
        shapes[f"coarse.mlp_denoise.{mlp}.norm.weight"] = (token,)
        shapes[f"coarse.mlp_denoise.{mlp}.norm.bias"] = (token,)
    shapes["coarse.mlp_denoise.linear_final.weight"] = (out, token)
    shapes["coarse.mlp_denoise.linear_final.bias"] = (out,)
    shapes["coarse.mlp_denoise.adaLN_modulation.1.weight"] = (6 * token, token)
    shapes["coarse.mlp_denoise.adaLN_modulation.1.bias"] = (6 * token,)
    if depth:
        shapes["t_embedder.fine_head.weight"] = (hidden, hidden)
        shapes["t_embedder.fine_head.bias"] = (hidden,)
        shapes.update({
            "fine.patch_embedder.fc1.weight": (4 * hidden, token),
            "fine.patch_embedder.fc1.bias": (4 * hidden,),
            "fine.patch_embedder.fc2.weight": (hidden, 4 * hidden),
            "fine.patch_embedder.fc2.bias": (hidden,),
            "fine.patch_embedder.skip.weight": (hidden, token),
            "fine.patch_embedder.norm.weight": (hidden,),
            "fine.patch_embedder.norm.bias": (hidden,),
            "fine.final_layer.linear.weight": (out, hidden),
            "fine.final_layer.linear.bias": (out,),
            "fine.final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
            "fine.final_layer.adaLN_modulation.1.bias": (2 * hidden,),
        })
        for i in range(depth):
            block = f"fine.blocks.{i}."
            shapes.update({
                block + "attn.qkv.weight": (3 * hidden, hidden),
                block + "attn.qkv.bias": (3 * hidden,),
                block + "attn.proj.weight": (hidden, hidden),
                block + "attn.proj.bias": (hidden,),
                block + "mlp.fc1.weight": (4 * hidden, hidden),
                block + "mlp.fc1.bias": (4 * hidden,),
                block + "mlp.fc2.weight": (hidden, 4 * hidden),
                block + "mlp.fc2.bias": (hidden,),
                block + "adaLN_modulation.1.weight": (6 * hidden, hidden),
                block + "adaLN_modulation.1.bias": (6 * hidden,),
            })
    return shapes


def official_state_dict(shapes: dict[str, tuple], seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: 0.05 * torch.randn(s, generator=generator) for k, s in shapes.items()}


def official_names() -> list[str]:
    names = [f"PRDiT-{s}/{p}/{d}" for s in SIZES for p in (10, 12, 14, 16) for d in (0, 3)]
    return names + list(SPECIAL_STRIDES)


@pytest.mark.parametrize("name", official_names())
def test_every_official_name_maps_onto_the_prdit_model_of_that_name(name):
    spec, stride = official_spec(name)
    shapes = official_shapes(spec.hidden_size, spec.patch, stride, spec.depth)
    converted = from_official(official_state_dict(shapes, device="meta"), stride)
    with torch.device("meta"):
        model = create_model(name, input_size=32, stride=stride)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert len(converted) == len(expected) < len(shapes) + 1  # the SwiGLU pairs fused, nothing invented


@pytest.mark.parametrize("name", ["PRDiT-XS/10/2", "PRDiT-XS/4/0", "PRDiT-XS/4/1"])
def test_conversion_only_rearranges_the_official_numbers(name):
    """Every official number lands in exactly one prdit tensor: nothing is lost, duplicated or made up."""
    spec, stride = official_spec(name)
    official = official_state_dict(official_shapes(spec.hidden_size, spec.patch, stride, spec.depth))
    converted = from_official(official, stride)
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors.values()]).sort().values  # noqa: E731
    assert torch.equal(flat(converted), flat(official))


def test_official_checkpoints_are_recognised_with_or_without_the_ddp_prefix():
    official = official_state_dict(official_shapes(192, 4, 4, 0), device="meta")
    assert is_official_state_dict(official)
    assert is_official_state_dict({f"module.{k}": v for k, v in official.items()})
    assert not is_official_state_dict(create_model("PRDiT-XS/4/0", input_size=8, stride=4).state_dict())


def test_unknown_keys_and_wrong_strides_are_named():
    official = official_state_dict(official_shapes(192, 4, 4, 0))
    with pytest.raises(CheckpointError, match="stride"):
        from_official(official, stride=3)
    with pytest.raises(CheckpointError, match="vae.decoder.weight"):
        from_official({**official, "vae.decoder.weight": torch.zeros(1)}, stride=4)


# ----------------------------------------------------------------------------------------------------------
# The official network, evaluated straight from an official-format state dict
# ----------------------------------------------------------------------------------------------------------


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _swiglu(sd, name, x):
    hidden = F.silu(_linear(sd, f"{name}.fc1_g", x)) * _linear(sd, f"{name}.fc1_x", x)
    hidden = F.layer_norm(hidden, hidden.shape[-1:], sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"], eps=1e-5)
    return _linear(sd, f"{name}.fc2", hidden)


def _position_code(grid: int, dim: int) -> torch.Tensor:
    """The official code's 3D code, for widths that are multiples of 6; it refuses other widths (T: 128, L: 1024),
    for which prdit fills the last dim % 6 channels with zeros."""
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    position = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    freqs = (0.95 * grid / 2) ** torch.linspace(0, 1, dim // 6) * 2 * math.pi
    code = torch.cat([fn(position[:, axis : axis + 1] * freqs) for axis in range(3) for fn in (torch.sin, torch.cos)], -1)
    return F.pad(code, (0, dim - code.shape[-1]))


def official_forward(sd, x, t, patch, stride, depth, heads):
    """The official PRDiT forward pass on an official state dict (one input channel, two heads)."""
    batch, size = x.shape[0], x.shape[-1]
    pad = (patch - stride) // 2
    padded = F.pad(x, (pad,) * 6, mode="reflect") if pad else x
    windows = padded.unfold(2, patch, stride).unfold(3, patch, stride).unfold(4, patch, stride)
    tokens = windows.reshape(batch, -1, patch**3)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    shared = F.silu(_linear(sd, "t_embedder.mlp.0", torch.cat([torch.cos(args), torch.sin(args)], -1)))
    cond = _linear(sd, "t_embedder.coarse_head", shared)

    local = "coarse.mlp_denoise"
    s1, c1, s2, c2, s3, c3 = _linear(sd, f"{local}.adaLN_modulation.1", F.silu(cond)).chunk(6, dim=1)
    width = tokens.shape[-1]
    h = _swiglu(sd, f"{local}.mlp1", _modulate(F.layer_norm(tokens, (width,), eps=1e-6), s1, c1))
    h = _swiglu(sd, f"{local}.mlp2", _modulate(F.layer_norm(h, (width,), eps=1e-6), s2, c2))
    out = _linear(sd, f"{local}.linear_final", _modulate(h + tokens, s3, c3))
    if depth:
        fine_cond = F.silu(_linear(sd, "t_embedder.fine_head", shared))
        embed = _linear(sd, "fine.patch_embedder.fc2", F.gelu(_linear(sd, "fine.patch_embedder.fc1", tokens), approximate="tanh"))
        embed = embed + _linear(sd, "fine.patch_embedder.skip", tokens)
        hidden = embed.shape[-1]
        h = F.layer_norm(embed, (hidden,), sd["fine.patch_embedder.norm.weight"], sd["fine.patch_embedder.norm.bias"], eps=1e-5)
        h = h + _position_code(size // stride, hidden)
        for i in range(depth):
            block = f"fine.blocks.{i}"
            sa, ca, ga, sm, cm, gm = _linear(sd, f"{block}.adaLN_modulation.1", fine_cond).chunk(6, dim=1)
            y = _modulate(F.layer_norm(h, (hidden,), eps=1e-6), sa, ca)
            q, k, v = _linear(sd, f"{block}.attn.qkv", y).reshape(batch, -1, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hidden // heads), dim=-1) @ v
            h = h + ga[:, None] * _linear(sd, f"{block}.attn.proj", attention.transpose(1, 2).reshape(batch, -1, hidden))
            y = _modulate(F.layer_norm(h, (hidden,), eps=1e-6), sm, cm)
            mlp = _linear(sd, f"{block}.mlp.fc2", F.gelu(_linear(sd, f"{block}.mlp.fc1", y), approximate="tanh"))
            h = h + gm[:, None] * mlp
        shift, scale = _linear(sd, "fine.final_layer.adaLN_modulation.1", fine_cond).chunk(2, dim=1)
        out = out + _linear(sd, "fine.final_layer.linear", _modulate(F.layer_norm(h, (hidden,), eps=1e-6), shift, scale))
    grid = size // stride
    # Official output tokens are [S, S, S, C]: channel last.
    volume = out.reshape(batch, grid, grid, grid, stride, stride, stride, 2).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return volume.reshape(batch, 2, size, size, size)


# Widths: XS (192) is a multiple of 6 * 32; T (128, prdit's own size) and L (1024) are not, and their heads are
# 32 and 64 wide; T runs at the shipped model's stride 4.
@pytest.mark.parametrize("name, size, stride", [("PRDiT-XS/10/2", 16, None), ("PRDiT-XS/12/1", 16, None), ("PRDiT-XS/4/0", 8, None),
                                                ("PRDiT-T/6/2", 16, 4), ("PRDiT-L/10/1", 16, None)])
def test_converted_weights_give_the_official_networks_output(name, size, stride):
    torch.manual_seed(0)
    spec, official_stride = official_spec(name)
    stride = stride or official_stride
    official = official_state_dict(official_shapes(spec.hidden_size, spec.patch, stride, spec.depth), seed=1)
    model = create_model(name, input_size=size, stride=stride).eval()
    model.load_state_dict(from_official(official, stride))
    x = 0.5 * torch.randn(2, 1, size, size, size)
    t = torch.tensor([999, 40])
    with torch.no_grad():
        expected = official_forward(official, x, t, spec.patch, stride, spec.depth, spec.num_heads)
        got = model(x, t)
    assert expected.abs().max() > 0.5  # weights large enough for a layout mistake to show
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    # The channel-last permutation matters: without it the heads would be interleaved voxel by voxel.
    wrong = dict(official)
    for key in ("coarse.mlp_denoise.linear_final", "fine.final_layer.linear"):
        if f"{key}.weight" in wrong:
            wrong[f"{key}.weight"] = wrong[f"{key}.weight"].roll(1, dims=0)
    with torch.no_grad():
        assert (official_forward(wrong, x, t, spec.patch, stride, spec.depth, spec.num_heads) - got).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------------
# Against the official code itself (PRDIT_OFFICIAL_SRC: a checkout of github Fredy-Zhang/PRDiT, never committed)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_prdit():
    """The official ``PRDiT`` class from the checkout that ``PRDIT_OFFICIAL_SRC`` names (its ``models`` package)."""
    source = os.environ.get("PRDIT_OFFICIAL_SRC")
    if not source:
        pytest.skip("PRDIT_OFFICIAL_SRC is not set: point it at a checkout of github Fredy-Zhang/PRDiT to compare "
                    "prdit with the official code itself (the layout written down above runs without it)")
    if not (Path(source) / "models" / "models.py").is_file():
        pytest.fail(f"PRDIT_OFFICIAL_SRC={source} holds no models/models.py: is it a checkout of Fredy-Zhang/PRDiT?")
    theirs = ("models", "util")  # the official top-level modules, which must not shadow anything after this test
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in theirs}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, source)
    try:
        try:
            import util  # noqa: F401  (models.models takes one helper from it; it also imports wandb and the data code)
        except ImportError:
            def requires_grad(model: torch.nn.Module, flag: bool = True) -> None:
                for parameter in model.parameters():
                    parameter.requires_grad = flag

            sys.modules["util"] = types.SimpleNamespace(requires_grad=requires_grad)  # type: ignore[assignment]
        try:
            from models.models import PRDiT as OfficialPRDiT
        except ImportError as error:
            pytest.skip(f"the official code does not import here ({error}); it needs timm")
        yield OfficialPRDiT
    finally:
        sys.path.remove(source)
        for name in [name for name in sys.modules if name.split(".")[0] in theirs]:
            del sys.modules[name]
        sys.modules.update(saved)


def _official_network(official_prdit, name: str, size: int, stride: int, seed: int = 1):
    spec = parse_model_name(name)
    torch.manual_seed(seed)
    network = official_prdit(input_size=size, patch_size=spec.patch, stride=stride, padding=(spec.patch - stride) // 2,
                             in_channels=1, hidden_size=spec.hidden_size, depth=spec.depth, num_heads=spec.num_heads,
                             learn_sigma=True)
    with torch.no_grad():
        for parameter in network.parameters():  # its own init zeroes the output layers: nothing would show
            parameter.normal_(0, 0.05)
    return network.eval()


# The official code refuses widths that are not multiples of 6 once it has global blocks (its position code needs
# dim % 6 == 0): T (128) and L (1024) are compared without them, and their refusal is checked.
@pytest.mark.parametrize("name, size, stride", [("PRDiT-XS/10/2", 16, 8), ("PRDiT-XS/12/1", 16, 8), ("PRDiT-S/10/1", 16, 8),
                                                ("PRDiT-T/6/0", 16, 4), ("PRDiT-L/10/0", 16, 8)])
def test_converted_weights_match_the_official_code(official_prdit, name, size, stride):
    official = _official_network(official_prdit, name, size, stride)
    model = create_model(name, input_size=size, stride=stride).eval()
    model.load_state_dict(from_official(official.state_dict(), stride))
    x = 0.5 * torch.randn(2, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 40])
    with torch.no_grad():
        expected, got = official(x, t), model(x, t)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["PRDiT-T/6/2", "PRDiT-L/10/1"])
def test_the_official_code_refuses_global_blocks_of_widths_not_divisible_by_six(official_prdit, name):
    with pytest.raises(ValueError, match="divisible by 6"):
        _official_network(official_prdit, name, 16, 4 if name.startswith("PRDiT-T") else 8)


# ----------------------------------------------------------------------------------------------------------
# Whole official checkpoints: load_pipeline, stage-1 initialisation, prdit convert
# ----------------------------------------------------------------------------------------------------------


def write_official_checkpoint(path, name="PRDiT-XS/10/1", image_size=16, task="lidc"):
    """What the official train.py saves: {model, ema, config (a plain dict), epoch, train_steps}."""
    spec, stride = official_spec(name)
    shapes = official_shapes(spec.hidden_size, spec.patch, stride, spec.depth)
    state = {
        "model": official_state_dict(shapes, seed=1), "ema": official_state_dict(shapes, seed=2),
        "config": {"data": {"image_size": image_size, "task": task, "path": "", "normalize": True},
                   "model": {"name": name, "in_channels": 1, "out_channels": 2, "num_classes": 1, "flash_attn": True},
                   "training": {"batch_size": 64, "learning_rate": 1e-4}},
        "epoch": 7, "train_steps": 1234,
    }
    torch.save(state, path)
    return state


def test_load_pipeline_reads_an_official_checkpoint_and_gives_its_networks_output(tmp_path):
    from prdit import load_pipeline

    state = write_official_checkpoint(tmp_path / "000123.pt")
    x = 0.5 * torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    for use_ema, key in ((True, "ema"), (False, "model")):
        pipeline = load_pipeline(tmp_path / "000123.pt", device="cpu", use_ema=use_ema)
        with torch.no_grad():
            torch.testing.assert_close(pipeline.model(x, t), official_forward(state[key], x, t, 10, 8, 1, 6), atol=2e-5, rtol=1e-5)
    assert pipeline.model.name == "PRDiT-XS/10/1" and pipeline.info["trained_steps"] == 1234
    assert pipeline.spacing == (16.0, 16.0, 16.0)  # official LIDC volumes: 1 mm at 256^3 (2 mm pooled to 128^3)
    sidecar = pipeline.sidecar(0, "ian-euler", 2)
    assert sidecar["source"]["hu_range"] == [-1000.0, 1000.0] and sidecar["source"]["hu_range_note"].startswith("assumed")
    volume = pipeline.sample(1, steps=2, sampler="ian-euler", progress=False, grid="paper")
    assert volume.shape == (1, 1, 16, 16, 16) and -1000.0 <= volume.min() and volume.max() <= 1000.0


def test_official_rad_checkpoints_train_in_the_unit_range(tmp_path):
    from prdit import load_pipeline

    write_official_checkpoint(tmp_path / "rad.pt", task="rad_chestct")
    pipeline = load_pipeline(tmp_path / "rad.pt", device="cpu", hu_range=(-1000.0, 800.0))
    assert pipeline.mapping.model_range == (0.0, 1.0)  # the official RAD loader never applies 2x - 1
    np.testing.assert_allclose(pipeline.mapping.to_hu(np.array([0.0, 1.0])), [-1000.0, 800.0])
    assert pipeline.sidecar(0, "ian-2m", 2)["source"]["hu_range_note"] == "given by the user"


def test_a_stage2_model_starts_from_an_official_stage1_checkpoint(tmp_path):
    from prdit.checkpoint import load_pretrained

    state = write_official_checkpoint(tmp_path / "stage1.pt", name="PRDiT-XS/10/0")
    model = create_model("PRDiT-XS/10/2", input_size=16)
    report = load_pretrained(model, tmp_path / "stage1.pt", weights="model")  # the paper's choice: raw weights
    expected = from_official(state["model"], 8)
    assert report.loaded and all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert all(k.startswith(("dit.", "fine_head.")) for k in report.new)


def test_bad_official_configs_are_named():
    from prdit.models.official import from_official_checkpoint

    state = {"model": official_state_dict(official_shapes(192, 4, 4, 0)), "config": {"model": {"name": "PRDiT-XS/4/0"}}}
    with pytest.raises(CheckpointError, match="LOW < HIGH"):
        from_official_checkpoint(state, (500.0, -500.0))
    with pytest.raises(CheckpointError, match="DDPM baseline"):
        from_official_checkpoint({**state, "config": {"model": {"name": "PRDiT-XS/4/0", "out_channels": 1}}})
    with pytest.raises(CheckpointError, match="config.model.name"):
        from_official_checkpoint({"model": state["model"]})
