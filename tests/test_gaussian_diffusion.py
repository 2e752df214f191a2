"""The IaN process: forward marginals, the loss against its closed-form minimum, timesteps, learning."""

import math

import pytest
import torch

from prdit.diffusion import IaNDiffusion, create_diffusion
from prdit.diffusion.testing import MixtureDenoiser
from prdit.errors import ConfigError

SIGMA, S, T = 0.5, 0.3, 1000


@pytest.mark.parametrize("t", [0, 250, 500, 999])
def test_forward_marginal_variance(t):
    diffusion = create_diffusion()
    generator = torch.Generator().manual_seed(t)
    x0 = S * torch.randn(64, 1, 16, 16, 16, generator=generator)
    x_t = diffusion.q_sample(x0, torch.full((64,), float(t)), torch.randn(x0.shape, generator=generator))
    phi = t / T * math.pi / 2
    expected = math.cos(phi) ** 2 * S**2 + math.sin(phi) ** 2 * SIGMA**2
    assert abs(x_t.var().item() / expected - 1) < 0.01


def test_loss_of_the_exact_denoiser_is_the_bayes_error():
    # Gaussian data: Var(x0 | x_t) = s^2 b^2 / v, Var(eps | x_t) = sigma^2 a^2 s^2 / v, v = a^2 s^2 + b^2.
    diffusion = create_diffusion()
    model = MixtureDenoiser(diffusion, [1.0], [0.0], [S])
    phi = torch.arange(T, dtype=torch.float64) / T * math.pi / 2
    a, b = torch.cos(phi), SIGMA * torch.sin(phi)
    expected = ((S**2 * b**2 + SIGMA**2 * a**2 * S**2) / (a**2 * S**2 + b**2)).mean().item()
    generator = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(4096, 1, 2, 2, 2, generator=generator)
    loss = diffusion.training_loss(model, x0, generator=generator)
    assert loss.dtype == torch.float32 and abs(loss.item() / expected - 1) < 0.03


def test_stratified_timesteps_keep_the_loss_and_lower_its_variance():
    def losses(method):
        diffusion = create_diffusion(timestep_sampling=method)
        model = MixtureDenoiser(diffusion, [1.0], [0.0], [S])
        generator = torch.Generator().manual_seed(0)
        x0 = S * torch.randn(16, 1, 4, 4, 4, generator=generator)
        return torch.stack([diffusion.training_loss(model, x0, generator=generator) for _ in range(100)])

    uniform, stratified = losses("uniform"), losses("stratified")
    assert abs(stratified.mean() / uniform.mean() - 1) < 0.05
    assert stratified.std() < 0.5 * uniform.std()
    with pytest.raises(ConfigError, match="timestep_sampling"):
        create_diffusion(timestep_sampling="cosine")


def test_training_timesteps_are_integers_in_range():
    seen = []
    diffusion = create_diffusion()

    def model(x, t):
        seen.append(t)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    for method in ("uniform", "stratified"):
        create_diffusion(timestep_sampling=method).training_loss(model, torch.zeros(512, 1, 1, 1, 1))
    t = torch.cat(seen)
    assert torch.equal(t, t.round()) and t.min() >= 0 and t.max() <= T - 1 and t.unique().numel() > 300
    assert diffusion.model_out_channels == 2


def test_loss_under_bf16_autocast_is_fp32_and_finite():
    diffusion = create_diffusion()
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion.training_loss(lambda x, t: net(x), torch.randn(2, 1, 8, 8, 8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_predict_x0_is_the_x0_head_and_noise_levels_match_flow_snr():
    diffusion = create_diffusion()
    model = MixtureDenoiser(diffusion, [1.0], [0.2], [S])
    x, t = torch.randn(3, 1, 2, 2, 2), torch.tensor([10.0, 500.0, 990.0])
    torch.testing.assert_close(diffusion.predict_x0(model, x, t), model(x, t)[:, 1:])
    assert diffusion.noise_level_timestep(0.0) == 0 and diffusion.noise_level_timestep(1.0) == T - 1
    for level in (0.2, 0.5, 0.8):
        phi = diffusion.noise_level_timestep(level) / T * math.pi / 2
        assert abs(math.cos(phi) / (SIGMA * math.sin(phi)) / ((1 - level) / level) - 1) < 0.01


def test_sampling_grid_starts_at_noise_and_rounds_uneven_steps():
    diffusion = create_diffusion()
    assert [round(p / (math.pi / 2) * T) for p in diffusion.angles(3)] == [1000, 667, 333, 0]
    assert diffusion.angles(1000)[1] == pytest.approx(999 / T * math.pi / 2)
    with pytest.raises(ConfigError, match="between 1 and"):
        diffusion.angles(2000)


def test_create_diffusion_reads_configs_and_checks_overrides():
    from types import SimpleNamespace

    from prdit.config import DiffusionConfig

    diffusion = create_diffusion(DiffusionConfig(noise_std=0.25, timesteps=500))
    assert isinstance(diffusion, IaNDiffusion) and diffusion.noise_std == 0.25 and diffusion.num_timesteps == 500
    saved = DiffusionConfig(process="flow").model_dump(mode="json")  # how a checkpoint stores it
    assert create_diffusion(SimpleNamespace(**saved)).process == "flow"
    with pytest.raises(ConfigError, match="noise_std"):
        create_diffusion(noise_std=-1)


@pytest.mark.parametrize("process", ["ian", "flow"])  # both processes here: one training loop, not two copies
def test_a_tiny_model_learns(process):
    from prdit.models import create_model

    torch.manual_seed(0)
    diffusion = create_diffusion(process=process)
    model = create_model("PRDiT-T/6/0", input_size=8, stride=4, out_channels=diffusion.model_out_channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    grid = torch.linspace(-1, 1, 8)
    blob = (1 - 2 * (grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)).clamp(-1, 1)
    data = torch.stack([blob, -blob])[:, None]  # a trivial dataset: a ball and its negative

    def evaluation_loss():
        with torch.no_grad():
            return sum(diffusion.training_loss(model, data, torch.Generator().manual_seed(i)) for i in range(2)) / 2

    before = evaluation_loss()
    for step in range(10):
        loss = diffusion.training_loss(model, data, torch.Generator().manual_seed(100 + step))
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert evaluation_loss() < 0.85 * before


def test_the_process_checks_its_own_settings():
    for bad, message in (({"timesteps": 1}, "timesteps=1"), ({"sample_steps": 0}, "sample_steps=0"), ({"process": "x"}, "process='x'")):
        with pytest.raises(ConfigError, match=message):
            create_diffusion(**bad)
    with pytest.raises(ConfigError, match="unknown diffusion setting"):
        create_diffusion(noise=0.3)
