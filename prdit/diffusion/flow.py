"""Rectified flow, the authors' follow-up: x_t = (1 - t) noise + t data, t ~ U(0, 1), unit-variance noise.

One velocity head is trained with an L2 loss against v = data - noise; the network receives t * 1000.
Sampling integrates dx/dt = v from t = 0 (noise) to t = 1 (data).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from prdit.diffusion import samplers
from prdit.diffusion.base import Diffusion, Guidance, SamplerSpec, call_model, unit_times
from prdit.errors import ConfigError

TIME_SCALE = 1000.0  # the network's timestep for t = 1


class FlowDiffusion(Diffusion):
    """Rectified flow; the network sees t * 1000 with t = 0 pure noise and t = 1 data."""

    process = "flow"
    model_out_channels = 1
    noise_scale = 1.0
    x0_position = 1
    sampler_specs = {
        "flow-euler": SamplerSpec(samplers.flow_euler, default_steps=100),
        # guided: no correction on the last step, where a guided x0_hat has no finite velocity
        "flow-heun": SamplerSpec(samplers.flow_heun, default_steps=25, calls_per_step=2,
                                 guided_fn=partial(samplers.flow_heun, correct_last=False)),
    }
    process_default_sampler = "flow-heun"

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t / TIME_SCALE
        return t, 1 - t

    def output_from_posterior(self, x0_hat: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        return x0_hat - z_hat

    def training_loss(self, model, x0: torch.Tensor, generator: torch.Generator | None = None, condition=None) -> torch.Tensor:
        x0 = x0.float()
        t = TIME_SCALE * unit_times(x0.shape[0], self.timestep_sampling, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        return F.mse_loss(call_model(model, self.q_sample(x0, t, noise), t, condition).float(), x0 - noise)

    def predict_x0(self, model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (t.float() / TIME_SCALE).view(-1, *(1,) * (x_t.dim() - 1))
        return x_t + (1 - s) * model(x_t, t).float()

    def noise_level_timestep(self, level: float) -> float:
        """Level l (0 clean, 1 pure noise) is x = (1 - l) data + l noise."""
        return (1 - level) * TIME_SCALE

    def network_time(self, t: float) -> float:
        return t * TIME_SCALE

    def predict(self, model, x: torch.Tensor, t: float, guidance: Guidance | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = model(x, torch.full((x.shape[0],), self.network_time(t), device=x.device)).float()
        x0_hat = x + (1 - t) * v
        if guidance is not None:
            guided = guidance(x0_hat, self.network_time(t)).float()
            v = v + (guided - x0_hat) / (1 - t)  # the velocity whose x0_hat is the guided one (t < 1 here)
            x0_hat = guided
        return v, x0_hat

    def time_grid(self, steps: int, grid: str = "prdit") -> list[float]:
        if grid != "prdit":
            raise ConfigError(f"the {grid!r} time grid is the paper's IaN grid; the flow process has only its own")
        if steps < 1:
            raise ConfigError(f"sample steps must be at least 1, got {steps}")
        return torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist()
