"""The image-and-noise (IaN) process of the paper.

x_t = cos(phi_t) x0 + sin(phi_t) eps, phi_t = (t / T) pi / 2, eps ~ N(0, sigma^2) (sigma = ``noise_std`` = 0.5),
integer t uniform in {0 .. T-1}. The network predicts both eps_hat and x0_hat (channels [eps_hat, x0_hat]) and
is trained with MSE(x0_hat, x0) + MSE(eps_hat, eps). Sampling solves dx/dphi = -sin(phi) x0 + cos(phi) eps
from phi = pi/2 (x = sigma z) down to phi = 0.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from prdit.diffusion import samplers
from prdit.diffusion.base import Diffusion, Guidance, SamplerSpec, call_model, unit_times
from prdit.errors import ConfigError


class IaNDiffusion(Diffusion):
    """The paper's image-and-noise process; the network sees integer timesteps t in [0, T-1] (as floats)."""

    process = "ian"
    model_out_channels = 2
    x0_position = 0
    process_default_sampler = "ian-2m"

    def __init__(self, timesteps: int = 1000, noise_std: float = 0.5, **options):
        if timesteps < 2:
            raise ConfigError(f"diffusion.timesteps={timesteps} must be at least 2")
        if not noise_std > 0:
            raise ConfigError(f"diffusion.noise_std={noise_std} must be positive")
        self.num_timesteps = timesteps
        self.noise_std = self.noise_scale = noise_std
        self.sampler_specs = {
            "ian-euler": SamplerSpec(samplers.ian_euler, default_steps=1000),
            "ian-pc": SamplerSpec(partial(samplers.ian_pc, sigma=noise_std), default_steps=1000),
            "ian-2m": SamplerSpec(samplers.ian_2m, default_steps=50),
        }
        super().__init__(**options)

    def angle(self, t: torch.Tensor) -> torch.Tensor:
        return t / self.num_timesteps * (math.pi / 2)

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.angle(t)
        return torch.cos(phi), self.noise_std * torch.sin(phi)

    def output_from_posterior(self, x0_hat: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.noise_std * z_hat, x0_hat], dim=1)

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output -> (eps_hat, x0_hat) in fp32."""
        eps_hat, x0_hat = output.float().chunk(2, dim=1)
        return eps_hat, x0_hat

    def training_loss(self, model, x0: torch.Tensor, generator: torch.Generator | None = None, condition=None) -> torch.Tensor:
        x0 = x0.float()
        u = unit_times(x0.shape[0], self.timestep_sampling, generator, x0.device)
        t = torch.floor(u * self.num_timesteps).clamp(max=self.num_timesteps - 1)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        eps_hat, x0_hat = self.split(call_model(model, self.q_sample(x0, t, noise), t, condition))
        return F.mse_loss(x0_hat, x0) + F.mse_loss(eps_hat, self.noise_std * noise)

    def predict_x0(self, model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.split(model(x_t, t))[1]

    def noise_level_timestep(self, level: float) -> float:
        """The timestep whose signal-to-noise amplitude ratio is the rectified flow's at this noise level.

        Level l is the flow's x = (1 - l) x0 + l z, ratio (1 - l) / l; here cos(phi) / (sigma sin(phi)). The
        timestep is rounded to the integers the network was trained on.
        """
        return self.network_time(math.atan2(level, self.noise_std * (1 - level)))

    def network_time(self, phi: float) -> float:
        # Rounded: the grid's angles come from integer timesteps. t = T (pure noise) is evaluated as T - 1,
        # the last trained timestep, whose signal amplitude cos(phi) = pi / (2T) is negligible.
        return float(min(round(phi / (math.pi / 2) * self.num_timesteps), self.num_timesteps - 1))

    def time_grid(self, steps: int, grid: str = "prdit") -> list[float]:
        return self.angles(steps, grid)

    def angles(self, steps: int, grid: str = "prdit") -> list[float]:
        """The sampling grid as angles from noise to data.

        ``prdit``: t_i = round(i T / steps) for i = steps .. 0, from pi/2 down to 0: the paper's
        ``range(0, T, T // steps)`` plus the endpoint T, so sampling starts at pure noise exactly (when ``steps``
        does not divide T the timesteps are rounded to the nearest integer). ``paper``: the paper code's grid,
        ``range(0, T, T // steps)`` walked down from T - T // steps (where it takes pure noise to be) to 0 and
        then one step from 0 to 0, whose network call gives the x0_hat the paper's code saves. It reproduces the
        official samplers exactly; it takes pure noise to be the state at T - T // steps, which leaves an error
        floor (two-mode mixture, Euler, RMS from the exact flow map in data stds: 0.0078 at 1000 steps against
        prdit's 0.0005; 0.075 against 0.046 at 20 steps).
        """
        if not 1 <= steps <= self.num_timesteps:
            raise ConfigError(f"sample steps must be between 1 and diffusion.timesteps={self.num_timesteps}, got {steps}")
        if grid == "paper":
            times = list(range(0, self.num_timesteps, self.num_timesteps // steps))[::-1] + [0]
            return [t / self.num_timesteps * (math.pi / 2) for t in times]
        return [round(i * self.num_timesteps / steps) / self.num_timesteps * (math.pi / 2) for i in range(steps, -1, -1)]

    def predict(self, model, x: torch.Tensor, phi: float, guidance: Guidance | None) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.network_time(phi)
        eps_hat, x0_hat = self.split(model(x, torch.full((x.shape[0],), t, device=x.device)))
        if guidance is not None:
            guided = guidance(x0_hat, t).float()
            # Keep the heads' residual x - cos x0_hat - sin eps_hat: eps_hat is unchanged where guidance leaves
            # x0_hat alone, and consistent with the guided x0_hat where it changes it. At phi = 0 (the paper
            # grid's last call) x is x0 itself and eps_hat has no weight in it: it stays the network's.
            if math.sin(phi) > 0:
                eps_hat = eps_hat + math.cos(phi) / math.sin(phi) * (x0_hat - guided)
            x0_hat = guided
        return x0_hat, eps_hat
