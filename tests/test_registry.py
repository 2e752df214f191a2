import math

import pytest
import torch

from prdit.errors import ConfigError
from prdit.models import ModelSpec, create_model, list_models, parse_model_name

# Parameter counts of the paper's official implementation (one input channel, eps and x0 heads).
REFERENCE_COUNTS = {
    "PRDiT-B/12/0": 39_156_160,
    "PRDiT-B/12/4": 93_228_992,
    "PRDiT-XL/12/0": 39_918_400,
    "PRDiT-XL/12/4": 155_974_208,
    "PRDiT-B/12/12": 178_255_808,
    "PRDiT-S/12/4": 53_781_824,
    "PRDiT-XS/12/4": 42_795_008,
}


def build_on_meta(name: str, input_size: int = 128, **options):
    """Shapes only, no memory and no initialisation cost: enough to count parameters."""
    with torch.device("meta"):
        return create_model(name, input_size, **options)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", REFERENCE_COUNTS.items())
def test_parameter_counts_match_the_paper(name, expected):
    assert count(build_on_meta(name)) == expected


def test_parameter_count_does_not_depend_on_the_volume_size():
    assert count(build_on_meta("PRDiT-B/12/4", 64)) == count(build_on_meta("PRDiT-B/12/4", 256))


def test_every_listed_name_builds_with_its_canonical_name():
    names = list_models()
    assert len(names) == len(set(names)) and "PRDiT-B/12/4" in names and "PRDiT-T/12/0" in names
    for name in names:
        model = build_on_meta(name)
        spec = parse_model_name(name)
        assert model.name == name == spec.name
        assert (model.patch_size, model.depth, model.stride) == (spec.patch, spec.depth, 8)
        assert (model.hidden_size, model.num_heads) == (spec.hidden_size, spec.num_heads)


def test_parse_and_alias():
    assert parse_model_name("PRDiT-B/12/4") == ModelSpec("B", 12, 4)
    assert parse_model_name("DiT-B/12/0") == ModelSpec("B", 12, 0)
    assert parse_model_name("prdit-xl/16/12") == ModelSpec("XL", 16, 12)
    spec = parse_model_name("DiT-XS/10/2")
    assert (spec.name, spec.hidden_size, spec.num_heads) == ("PRDiT-XS/10/2", 192, 6)
    assert build_on_meta("DiT-B/12/4").name == "PRDiT-B/12/4"


def test_tiny_cpu_size():
    model = create_model("PRDiT-T/6/4", 32, stride=4)
    assert (model.hidden_size, model.num_heads, model.stride, model.token_dim) == (128, 4, 4, 216)
    out = model(torch.zeros(1, 1, 32, 32, 32), torch.tensor([10.0]))
    assert out.shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("name, close", [("PRDiT-BB/12/4", "PRDiT-B/12/4"), ("PRDiT-B-12-4", "PRDiT-B/12/4")])
def test_unknown_name_lists_the_closest_valid_names(name, close):
    with pytest.raises(ConfigError) as error:
        create_model(name, 64)
    assert repr(name) in str(error.value) and close in str(error.value)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        create_model("PRDiT-T/12/0", 16, grad_checkpointing=True)


def test_nonstandard_patch_needs_an_explicit_stride():
    with pytest.raises(ConfigError, match="stride"):
        create_model("PRDiT-T/6/0", 32)
    assert create_model("PRDiT-T/6/0", 32, stride=4).stride == 4


def test_options_reach_the_model():
    model = build_on_meta("PRDiT-B/16/2", grad_checkpoint=True, stride=8)
    assert model.dit.grad_checkpoint and model.local_denoiser.grad_checkpoint
    model = create_model("PRDiT-T/12/1", 16, in_channels=2, out_channels=1)
    assert model(torch.zeros(1, 2, 16, 16, 16), torch.tensor([1.0])).shape == (1, 2, 16, 16, 16)


def test_a_fresh_stage2_model_has_the_papers_initialisation_scale():
    # Official stage 2 at B size: global-DiT qkv std 0.1 * sqrt(2 / (768 + 2304)) = 0.00255 (gain 1 would give 0.0255).
    torch.manual_seed(0)
    qkv = create_model("PRDiT-B/12/1", 16).dit.blocks[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.00255, rel=0.02)
    assert create_model("PRDiT-XS/12/1", 16, init_gain=1.0).dit.blocks[0].attn.qkv.weight.std().item() == pytest.approx(
        math.sqrt(2 / (192 + 576)), rel=0.05
    )
