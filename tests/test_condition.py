"""Conditional PRDiT: new condition weights start at zero (a conditional model from unconditional weights is that
model), a dropped condition is exactly the unconditional network, and classifier-free guidance is exact at w = 0, 1."""

import pytest
import torch

from prdit.diffusion import create_diffusion
from prdit.models import Condition, GuidedModel, create_model

SIZE = 16


def unconditional(depth: int):
    """A "trained" unconditional model: fresh weights plus noise, so no output layer is zero any more."""
    torch.manual_seed(0)
    model = create_model(f"PRDiT-T/6/{depth}", SIZE, stride=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape))
    return model


def conditional(depth: int, labels: int = 3, attributes: int = 2):
    torch.manual_seed(1)
    return create_model(f"PRDiT-T/6/{depth}", SIZE, stride=4, label_channels=labels, attributes=attributes)


def some_condition(batch: int = 2, labels: int = 3, attributes: int = 2) -> Condition:
    generator = torch.Generator().manual_seed(5)
    label_map = torch.randint(0, labels + 1, (batch, 1, SIZE, SIZE, SIZE), generator=generator)
    values = torch.randn(batch, attributes, generator=generator)
    return Condition(Condition.from_label_map(label_map, range(1, labels + 1)), values, torch.ones(batch, attributes))


def perturb(model) -> None:
    """Give every weight a non-zero value, as training would."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "condition" in name or not parameter.any():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(7)
    return torch.randn(batch, 1, SIZE, SIZE, SIZE, generator=generator), torch.tensor([3.0, 700.0][:batch])


@pytest.mark.parametrize("depth", [0, 1])
def test_a_conditional_model_initialised_from_an_unconditional_one_gives_its_outputs(depth):
    base, model = unconditional(depth), conditional(depth)
    # every output layer of a condition path is zero and bias-free
    for encoder in [model.local_condition] + ([model.dit_condition] if depth else []):
        assert not encoder.labels.weight.any() and encoder.labels.bias is None
        assert not encoder.attribute_out.weight.any() and encoder.attribute_out.bias is None
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all("condition" in key for key in missing)
    x, t = inputs()
    assert torch.equal(model(x, t, condition=some_condition()), base(x, t))


@pytest.mark.parametrize("depth", [0, 1])
def test_a_dropped_condition_is_the_unconditional_network_exactly(depth):
    base, model = unconditional(depth), conditional(depth)
    model.load_state_dict(base.state_dict(), strict=False)
    perturb(model)
    x, t = inputs()
    condition = some_condition()
    with_condition = model(x, t, condition=condition)
    assert (with_condition - base(x, t)).abs().max() > 1e-3  # the condition does reach the output
    assert torch.equal(model(x, t, condition=condition.null()), base(x, t))
    assert torch.equal(model(x, t), base(x, t))
    dropped = condition.dropped(1.0 - 1e-9)
    assert not dropped.labels.any() and not dropped.attribute_mask.any()
    assert torch.equal(model(x, t, condition=dropped), base(x, t))


def test_labels_and_attributes_each_change_the_output():
    model = conditional(1)
    perturb(model)
    x, t = inputs()
    condition = some_condition()
    full = model(x, t, condition=condition)
    no_labels = model(x, t, condition=Condition(torch.zeros_like(condition.labels), condition.attributes, condition.attribute_mask))
    no_attributes = model(x, t, condition=Condition(condition.labels, condition.attributes, torch.zeros_like(condition.attribute_mask)))
    assert (full - no_labels).abs().max() > 1e-4 and (full - no_attributes).abs().max() > 1e-4


def test_condition_dropout_drops_each_part_and_the_whole_at_the_given_rate():
    batch = 4000
    condition = Condition(torch.ones(batch, 2, 4, 4, 4), torch.ones(batch, 3), torch.ones(batch, 3))
    assert condition.dropped(0.0) is condition
    dropped = condition.dropped(0.1, torch.Generator().manual_seed(0))
    labels_kept = dropped.labels.flatten(1).amax(1) > 0
    attributes_kept = dropped.attribute_mask.amax(1) > 0
    assert torch.equal(dropped.labels.flatten(1).amin(1) > 0, labels_kept)  # a sample's labels go all or nothing
    both_dropped = (~labels_kept & ~attributes_kept).float().mean()
    # P(labels dropped) = p + (1 - p) p = 0.19; P(both) = p + (1 - p) p^2 = 0.109
    assert abs((~labels_kept).float().mean() - 0.19) < 0.03 and abs(both_dropped - 0.109) < 0.025
    again = condition.dropped(0.1, torch.Generator().manual_seed(0))
    assert torch.equal(again.attribute_mask, dropped.attribute_mask)


def test_guidance_scale_zero_is_the_unconditional_pass_and_one_the_conditional():
    model = conditional(1)
    perturb(model)
    x, t = inputs()
    condition = some_condition()
    cond, uncond = model(x, t, condition=condition), model(x, t, condition=condition.null())
    assert torch.equal(GuidedModel(model, condition, 1.0)(x, t), cond)
    assert torch.equal(GuidedModel(model, condition, 0.0)(x, t), uncond)
    torch.testing.assert_close(GuidedModel(model, condition, 3.0)(x, t), uncond + 3.0 * (cond - uncond), rtol=0, atol=1e-5)


@pytest.mark.parametrize("process, sampler", [("ian", "ian-2m"), ("ian", "ian-euler"), ("ian", "ian-pc"),
                                              ("flow", "flow-euler"), ("flow", "flow-heun")])
def test_every_sampler_samples_with_guidance(process, sampler):
    diffusion = create_diffusion(process=process)
    torch.manual_seed(2)
    model = create_model("PRDiT-T/6/1", SIZE, stride=4, out_channels=diffusion.model_out_channels, label_channels=3, attributes=2)
    perturb(model)
    condition = some_condition(batch=1)
    noise = torch.randn(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(4))

    def run(network):
        return diffusion.sample(network, tuple(noise.shape), sampler=sampler, steps=2, noise=noise, progress=False,
                                generator=torch.Generator().manual_seed(9))

    conditional_sample = run(lambda x, t: model(x, t, condition=condition))
    assert torch.equal(run(GuidedModel(model, condition, 1.0)), conditional_sample)
    guided = run(GuidedModel(model, condition, 2.0))
    assert torch.isfinite(guided).all() and (guided - conditional_sample).abs().max() > 1e-5


def test_a_frozen_local_path_freezes_its_condition_inputs_too():
    model = conditional(1)
    model.freeze_local_denoiser()
    assert not any(p.requires_grad for p in model.local_condition.parameters())
    assert all(p.requires_grad for p in model.dit_condition.parameters())


def test_a_condition_of_the_wrong_shape_or_for_an_unconditional_model_is_refused():
    model, x, t = conditional(0), *inputs()
    with pytest.raises(ValueError, match="condition labels"):
        model(x, t, condition=some_condition(labels=2, attributes=2))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(0)(x, t, condition=some_condition())
