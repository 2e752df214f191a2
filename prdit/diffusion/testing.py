"""Test doubles for the diffusion processes: networks whose exact answers are known."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import ndtr

from prdit.diffusion.base import Diffusion


class MixtureDenoiser(torch.nn.Module):
    """The exact posterior-mean network of a process for data whose voxels are i.i.d. from a 1D Gaussian mixture.

    With x_t = a x0 + b z and component k ~ N(m_k, s_k^2) of weight w_k: x_t | k ~ N(a m_k, v_k), v_k = a^2 s_k^2
    + b^2, E[x0 | x_t, k] = m_k + a s_k^2 (x_t - a m_k) / v_k and E[z | x_t, k] = b (x_t - a m_k) / v_k, mixed
    with the posterior weights of k. One component is the Gaussian case. Called like the network: model(x, t).
    """

    weights: torch.Tensor  # buffers: component weights, means and standard deviations
    means: torch.Tensor
    stds: torch.Tensor

    def __init__(self, diffusion: Diffusion, weights: Sequence[float], means: Sequence[float], stds: Sequence[float]):
        super().__init__()
        self.diffusion = diffusion
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("stds", torch.tensor(stds, dtype=torch.float32))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        a, b = (c.view(-1, *(1,) * x.dim()) for c in self.diffusion.signal_noise(t))
        residual = x.float().unsqueeze(-1) - a * self.means  # a trailing axis over the components
        var = a**2 * self.stds**2 + b**2
        responsibility = torch.softmax(torch.log(self.weights) - 0.5 * residual**2 / var - 0.5 * torch.log(var), dim=-1)
        x0_hat = (responsibility * (self.means + a * self.stds**2 * residual / var)).sum(-1)
        z_hat = (responsibility * b * residual / var).sum(-1)
        return self.diffusion.output_from_posterior(x0_hat, z_hat).to(x.dtype)

    def transport(self, z: torch.Tensor) -> torch.Tensor:
        """The exact probability-flow ODE solution from standard-normal starting noise ``z``.

        In 1D the ODE map is increasing, so it is the monotone transport F^-1(Phi(z)) of the data CDF F.
        """
        means, stds, weights = (p.numpy() for p in (self.means, self.stds, self.weights))
        grid = np.linspace((means - 8 * stds).min(), (means + 8 * stds).max(), 400_001)
        cdf = (weights * ndtr((grid[:, None] - means) / stds)).sum(-1)
        return torch.from_numpy(np.interp(ndtr(z.double().numpy()), cdf, grid)).to(z.dtype)

    def sample_data(self, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws from the data distribution."""
        k = torch.multinomial(self.weights.float(), math.prod(shape), replacement=True, generator=generator)
        z = torch.randn(math.prod(shape), generator=generator)
        return (self.means[k] + self.stds[k] * z).view(*shape)
