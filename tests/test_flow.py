"""Rectified flow: forward marginals, the loss against its closed-form minimum, x0 from the velocity."""

import pytest
import torch

from prdit.diffusion import FlowDiffusion, create_diffusion
from prdit.diffusion.testing import MixtureDenoiser

S = 0.3


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9])
def test_forward_marginal_variance(t):
    diffusion = create_diffusion(process="flow")
    generator = torch.Generator().manual_seed(int(t * 100))
    x0 = S * torch.randn(64, 1, 16, 16, 16, generator=generator)
    x_t = diffusion.q_sample(x0, torch.full((64,), t * 1000), torch.randn(x0.shape, generator=generator))
    expected = t**2 * S**2 + (1 - t) ** 2
    assert abs(x_t.var().item() / expected - 1) < 0.01


def test_loss_of_the_exact_denoiser_is_the_bayes_error():
    # Gaussian data, x = t x0 + (1 - t) z: Var(x0 - z | x) = s^2 / (t^2 s^2 + (1 - t)^2), averaged over t ~ U(0, 1).
    diffusion = create_diffusion(process="flow")
    assert isinstance(diffusion, FlowDiffusion) and diffusion.model_out_channels == 1
    model = MixtureDenoiser(diffusion, [1.0], [0.0], [S])
    t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    expected = (S**2 / (t**2 * S**2 + (1 - t) ** 2)).mean().item()
    generator = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(4096, 1, 2, 2, 2, generator=generator)
    for method in ("uniform", "stratified"):
        loss = create_diffusion(process="flow", timestep_sampling=method).training_loss(model, x0, generator=generator)
        assert loss.dtype == torch.float32 and abs(loss.item() / expected - 1) < 0.05


def test_network_sees_t_times_1000():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    create_diffusion(process="flow", timestep_sampling="stratified").training_loss(model, torch.zeros(256, 1, 1, 1, 1))
    t = seen[0]
    assert 0 <= t.min() < 10 and 990 < t.max() <= 1000 and t.unique().numel() == 256


def test_predict_x0_and_noise_levels():
    # From the exact velocity, x0_hat = x_t + (1 - t) v must be the Gaussian posterior mean
    # m + t s^2 (x_t - t m) / (t^2 s^2 + (1 - t)^2).
    m, diffusion = 0.2, create_diffusion(process="flow")
    model = MixtureDenoiser(diffusion, [1.0], [m], [S])
    x_t, t = torch.randn(4, 1, 2, 2, 2), torch.tensor([0.0, 300.0, 700.0, 990.0])
    u = (t / 1000).view(-1, 1, 1, 1, 1)
    expected = m + u * S**2 * (x_t - u * m) / (u**2 * S**2 + (1 - u) ** 2)
    torch.testing.assert_close(diffusion.predict_x0(model, x_t, t), expected, rtol=1e-4, atol=1e-5)
    assert diffusion.noise_level_timestep(0.0) == 1000 and diffusion.noise_level_timestep(1.0) == 0
    assert diffusion.noise_level_timestep(0.25) == 750
