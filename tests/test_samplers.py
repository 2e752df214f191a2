"""Samplers against exact mathematics: the analytic posterior-mean "network" of i.i.d. 1D data.

For such data the probability-flow ODE maps the starting noise z to F^-1(Phi(z)) (``MixtureDenoiser.transport``),
so a deterministic sampler can be checked sample by sample, not only in distribution.
"""

import math

import pytest
import torch

from prdit.diffusion import create_diffusion, samplers
from prdit.diffusion.testing import MixtureDenoiser
from prdit.errors import ConfigError

GAUSSIAN = ([1.0], [0.3], [0.2])
MIXTURE = ([0.3, 0.7], [-0.6, 0.4], [0.05, 0.1])
# Every sampler; the paper's samplers and flow-euler at 200 steps (first order: 1000 / 100 default cost time).
SAMPLERS = [("ian", "ian-euler", 200), ("ian", "ian-pc", 200), ("ian", "ian-2m", None), ("flow", "flow-euler", 200),
            ("flow", "flow-heun", None)]
SHAPE = (1, 1, 16, 16, 16)


def standard_noise(shape, seed=0):
    """Normal noise standardised to mean 0, std 1 exactly, so exact transport has exactly the data's mean/std."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


def run(process, sampler, problem, shape=SHAPE, steps=None, **kwargs):
    diffusion = create_diffusion(process=process)
    model = MixtureDenoiser(diffusion, *problem)
    z = standard_noise(shape)
    x = diffusion.sample(model, shape, sampler, steps, noise=z, progress=False,
                         generator=torch.Generator().manual_seed(1), **kwargs)
    return x, model.transport(z)


@pytest.mark.parametrize("process, sampler, steps", SAMPLERS)
def test_gaussian_data_mean_and_std(process, sampler, steps):
    mu, s = 0.3, 0.2
    x, _ = run(process, sampler, GAUSSIAN, steps=steps)
    assert abs(x.mean().item() - mu) < 0.02 * mu
    assert abs(x.std().item() - s) < 0.02 * s


@pytest.mark.parametrize("process, sampler, steps", SAMPLERS)
def test_mixture_modes_in_right_proportions(process, sampler, steps):
    x, _ = run(process, sampler, MIXTURE, steps=steps)
    low = x < -0.1
    assert abs(low.float().mean().item() - 0.3) < 0.015
    # Samples sit on the modes, not between them.
    assert ((x + 0.6).abs() < 0.3).logical_or((x - 0.4).abs() < 0.5).float().mean() > 0.995
    assert abs(x[low].mean().item() + 0.6) < 0.01 and abs(x[~low].mean().item() - 0.4) < 0.01
    assert abs(x[low].std().item() - 0.05) < 0.005 and abs(x[~low].std().item() - 0.1) < 0.005


@pytest.mark.parametrize(
    "process, sampler, steps",
    [pytest.param("ian", "ian-euler", 1000, marks=pytest.mark.slow), ("ian", "ian-2m", None), ("flow", "flow-heun", None)],
)
def test_deterministic_samplers_follow_the_exact_ode_map(process, sampler, steps):
    x, exact = run(process, sampler, MIXTURE, shape=(1, 1, 8, 8, 8), steps=steps)
    tolerance = 0.002 if steps == 1000 else 0.025  # the paper's sampler vs the few-step defaults
    assert (x - exact).pow(2).mean().sqrt() < tolerance * exact.std()


@pytest.mark.parametrize("process, first_order, second_order", [("ian", "ian-euler", "ian-2m"), ("flow", "flow-euler", "flow-heun")])
def test_error_shrinks_with_steps_at_the_methods_order(process, first_order, second_order):
    def error(sampler, steps):
        x, exact = run(process, sampler, GAUSSIAN, shape=(1, 1, 16, 16, 16), steps=steps)
        return (x - exact).pow(2).mean().sqrt().item()

    first = error(first_order, 10) / error(first_order, 20)
    second = error(second_order, 10) / error(second_order, 20)
    assert 1.6 < first < 2.6  # halving the step halves a first-order error
    assert second > 3.0  # ... and quarters a second-order one
    assert error(second_order, 20) < error(first_order, 20) / 3


def test_ian_pc_keeps_the_marginal_variance_through_its_corrector():
    # With heads that give zero slope, one pc step is the corrector alone: phi_2 -> phi_1 re-noising.
    sigma, s = 0.5, 0.3
    phis = [0.9, 0.6, 0.2]
    x0 = s * torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    x = math.cos(phis[2]) * x0 + math.sin(phis[2]) * sigma * torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    zero_slope = lambda x, phi: (torch.zeros_like(x), torch.zeros_like(x))  # noqa: E731
    out, _ = samplers.ian_pc(zero_slope, x, phis, lambda: torch.randn(x.shape, generator=generator), sigma)
    expected = math.cos(phis[1]) ** 2 * s**2 + math.sin(phis[1]) ** 2 * sigma**2
    assert abs(out.var().item() / expected - 1) < 0.01


@pytest.mark.parametrize("process, sampler, steps", [("ian", "ian-pc", 6), ("ian", "ian-2m", 4), ("flow", "flow-heun", 3)])
def test_seeded_and_batch_independent(process, sampler, steps):
    diffusion = create_diffusion(process=process)
    model = MixtureDenoiser(diffusion, *MIXTURE)

    def draw(seeds):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return diffusion.sample(model, (len(seeds), 1, 4, 4, 4), sampler, steps, generator=generators, progress=False)

    batch = draw([5, 6, 7])
    torch.testing.assert_close(batch, draw([5, 6, 7]), rtol=0, atol=0)
    torch.testing.assert_close(batch[1:2], draw([6]), rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])
    one = diffusion.sample(model, (2, 1, 4, 4, 4), sampler, steps, generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(one, diffusion.sample(model, (2, 1, 4, 4, 4), sampler, steps,
                                                     generator=torch.Generator().manual_seed(3), progress=False))


@pytest.mark.parametrize("process, sampler", [s[:2] for s in SAMPLERS])
def test_guidance_replacing_a_region_shows_in_the_output(process, sampler):
    def infill(x0_hat, t):
        x0_hat = x0_hat.clone()
        x0_hat[:, :, :2] = -0.1  # between the modes (5 and 10 of their stds away): the prior never puts it there
        return x0_hat

    steps = 20 if sampler != "ian-pc" else 100
    guided, _ = run(process, sampler, MIXTURE, shape=(2, 1, 4, 4, 4), steps=steps, guidance=infill)
    free, _ = run(process, sampler, MIXTURE, shape=(2, 1, 4, 4, 4), steps=steps)
    torch.testing.assert_close(guided[:, :, :2], torch.full_like(guided[:, :, :2], -0.1), rtol=0, atol=0.01)
    # Voxels are independent: guidance elsewhere leaves the rest as it was (ian-pc draws other noise, and guided
    # flow-heun skips its last correction).
    if sampler not in ("ian-pc", "flow-heun"):
        torch.testing.assert_close(guided[:, :, 2:], free[:, :, 2:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("process, sampler", [s[:2] for s in SAMPLERS])
def test_network_calls_callback_and_last_x0(process, sampler):
    diffusion = create_diffusion(process=process)
    model = MixtureDenoiser(diffusion, *GAUSSIAN)
    calls, seen = [], []

    def counting_model(x, t):
        calls.append(t)
        return model(x, t)

    steps = 8
    x, x0 = diffusion.sample(counting_model, (2, 1, 4, 4, 4), sampler, steps, return_x0=True, progress=False,
                             generator=torch.Generator().manual_seed(0), callback=lambda i, t, x, x0: seen.append((i, t)))
    assert len(calls) == diffusion.network_calls(sampler, steps)
    assert [i for i, _ in seen] == list(range(len(calls)))
    network_times = [t for _, t in seen]
    assert all(0 <= t <= 1000 for t in network_times)
    assert x0.shape == x.shape and (x - x0).abs().mean() < 0.1  # the last x0_hat is near the final sample


def test_sampler_names_are_checked():
    ian, flow = create_diffusion(), create_diffusion(process="flow")
    model = MixtureDenoiser(ian, *GAUSSIAN)
    with pytest.raises(ConfigError, match="ian-euler, ian-pc, ian-2m"):
        ian.sample(model, (1, 1, 2, 2, 2), sampler="flow-heun", progress=False)
    with pytest.raises(ConfigError, match="flow-euler, flow-heun"):
        flow.resolve("ian-2m")
    with pytest.raises(ConfigError, match="valid"):
        create_diffusion(sampler="euler")


def test_defaults_are_few_step_samplers():
    for diffusion in (create_diffusion(), create_diffusion(process="flow")):
        assert diffusion.default_sampler in diffusion.samplers
        assert diffusion.network_calls(*diffusion.resolve()) <= 50
    configured = create_diffusion(sampler="ian-pc", sample_steps=200)
    assert configured.resolve() == ("ian-pc", 200) and configured.resolve("ian-euler") == ("ian-euler", 200)
    assert configured.resolve("ian-2m", 7) == ("ian-2m", 7)
    assert create_diffusion().resolve("ian-euler") == ("ian-euler", 1000)


def test_every_sampler_in_the_table_runs_through_one_call():
    for diffusion in (create_diffusion(), create_diffusion(process="flow")):
        model = MixtureDenoiser(diffusion, *GAUSSIAN)
        for name, spec in diffusion.sampler_specs.items():
            calls = []
            diffusion.sample(model, (1, 1, 2, 2, 2), sampler=name, steps=3, progress=False, generator=torch.Generator().manual_seed(0),
                             callback=lambda i, t, x, x0: calls.append(i))
            assert len(calls) == diffusion.network_calls(name, 3) == spec.calls_per_step * 3


# ----------------------------------------------------------------------------------------------------------
# The paper's time grid reproduces the official samplers (Fredy-Zhang/PRDiT 6a75fd2, diffusion/ian_diffusion.py),
# written out independently below: seq = range(0, T, T // steps) walked down, the next time of 0 is 0.
# ----------------------------------------------------------------------------------------------------------


def official_sampler(model, z, steps, predictor_corrector, generator, T=1000):
    skip = T // steps
    seq = list(range(0, T, skip))
    following = [0] + seq[:-1]
    x, x0 = z, None
    for i, j in zip(reversed(seq), reversed(following)):
        t = torch.full((z.shape[0],), float(i))
        eps, x0 = model(x, t).chunk(2, dim=1)
        if not predictor_corrector:  # "at" = 1 - t / T; the update is written in those terms
            at, next_at = 1 - i / T, 1 - j / T
            x = x - (at - next_at) * math.pi / 2 * (math.cos(at * math.pi / 2) * x0 - math.sin(at * math.pi / 2) * eps)
            continue
        h = (j - i) * math.pi / 2 / T
        beta = i / T * math.pi / 2
        slope = math.sin(beta) * x0 - math.cos(beta) * eps
        if i - 2 * (i - j) > 0:
            predicted = x - 2 * h * slope
            a = math.cos((i - (i - j)) / T * math.pi / 2) / math.cos((i - 2 * (i - j)) / T * math.pi / 2)
            x = a * predicted + math.sqrt(max(1 - a * a, 0.0)) * 0.5 * torch.randn(x.shape, generator=generator)
        else:
            x = x - h * slope
    return x, x0


@pytest.mark.parametrize("sampler, steps", [("ian-euler", 20), ("ian-euler", 7), ("ian-pc", 20), ("ian-pc", 1000)])
def test_paper_grid_reproduces_the_official_samplers(sampler, steps):
    diffusion = create_diffusion(process="ian")
    model = MixtureDenoiser(diffusion, *MIXTURE)
    shape = (2, 1, 6, 6, 6)
    z = 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(0))  # the official start: randn * 0.5
    expected, expected_x0 = official_sampler(model, z, steps, sampler == "ian-pc", torch.Generator().manual_seed(5))
    x, x0 = diffusion.sample(model, shape, sampler, steps, noise=z / 0.5, generator=torch.Generator().manual_seed(5),
                             progress=False, return_x0=True, grid="paper")
    torch.testing.assert_close(x, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x0, expected_x0, atol=2e-5, rtol=1e-5)
    calls = []
    diffusion.sample(model, shape, sampler, steps, noise=z / 0.5, progress=False, grid="paper",
                     callback=lambda i, t, x, x0: calls.append(t))
    seq = range(0, 1000, 1000 // steps)  # pure noise is taken to be the state at seq[-1]; the last call is at t = 0
    assert calls == [float(t) for t in reversed(seq)]


def test_hot_pc_corrects_only_while_its_two_step_target_is_above_zero():
    draws = []
    counting = lambda: draws.append(1) or torch.zeros(1)  # noqa: E731
    still = lambda x, phi: (torch.zeros_like(x), torch.zeros_like(x))  # noqa: E731
    phis = [(10 - k) / 10 * math.pi / 2 for k in range(11)]  # t = 1000, 900, .., 0
    samplers.ian_pc(still, torch.zeros(1), phis, counting, 0.5)
    assert len(draws) == 8  # t = 1000 .. 300 correct; the steps from t = 200 (target 0) and t = 100 are Euler
    draws.clear()
    samplers.ian_pc(still, torch.zeros(1), create_diffusion(process="ian").angles(10, grid="paper"), counting, 0.5)
    assert len(draws) == 7  # the official rule: t = 900 .. 300 (i - 2 * skip > 0)


def test_the_paper_grid_is_for_the_ian_process_only():
    with pytest.raises(ConfigError, match="grid"):
        create_diffusion(process="flow").sample(MixtureDenoiser(create_diffusion(process="flow"), *GAUSSIAN), (1, 1, 4, 4, 4),
                                                steps=2, progress=False, grid="paper")
    with pytest.raises(ConfigError, match="grid"):
        create_diffusion(process="ian").sample(None, (1, 1, 4, 4, 4), steps=2, progress=False, grid="official")
