"""Samplers, and the interface both diffusion processes share.

Each sampler is a short function that reads like its algorithm (in the style of NVlabs/edm). It receives a
``denoise(x, time)`` callable that evaluates the network once (guidance and bookkeeping are already applied)
and the time grid in the process's own units, from pure noise to data:

- IaN samplers walk the angle ``phi`` from pi/2 (noise) to 0 (data); ``denoise`` returns ``(x0_hat, eps_hat)``.
- Flow samplers walk ``t`` from 0 (noise) to 1 (data); ``denoise`` returns ``(velocity, x0_hat)``.

Every sampler returns ``(x, last x0_hat)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr
from tqdm.auto import tqdm

from prdit.errors import ConfigError

Generators = torch.Generator | Sequence[torch.Generator] | None
Guidance = Callable[[torch.Tensor, float], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# IaN samplers: x = cos(phi) x0 + sin(phi) eps, eps ~ N(0, sigma^2); dx/dphi = -sin(phi) x0 + cos(phi) eps
# ----------------------------------------------------------------------------------------------------------


def ian_euler(denoise, x: torch.Tensor, phis: Sequence[float]):
    """The paper's deterministic sampler: Euler steps on the angle ODE."""
    for phi, phi_next in zip(phis[:-1], phis[1:]):
        x0, eps = denoise(x, phi)
        x = x + (phi_next - phi) * (-math.sin(phi) * x0 + math.cos(phi) * eps)
    return x, x0


def ian_pc(denoise, x: torch.Tensor, phis: Sequence[float], sigma: float, normal: Callable[[], torch.Tensor]):
    """The paper's hot predictor-corrector sampler.

    Predictor: a deterministic Euler jump of two steps, phi_i -> phi_(i+2). Corrector: exact forward re-noising
    back to phi_(i+1), x <- a x + sqrt(1 - a^2) sigma z with a = cos(phi_(i+1)) / cos(phi_(i+2)), which keeps
    the marginal of the process. The last step, where a two-step jump would pass the data end, is plain Euler.
    """
    n = len(phis) - 1
    for i in range(n):
        x0, eps = denoise(x, phis[i])
        slope = -math.sin(phis[i]) * x0 + math.cos(phis[i]) * eps
        if i + 2 <= n:
            x = x + (phis[i + 2] - phis[i]) * slope
            a = math.cos(phis[i + 1]) / math.cos(phis[i + 2])
            x = a * x + math.sqrt(1 - a * a) * sigma * normal()
        else:
            x = x + (phis[i + 1] - phis[i]) * slope
    return x, x0


def ian_2m(denoise, x: torch.Tensor, phis: Sequence[float]):
    """Few-step sampler: second-order multistep (one network call a step), DPM-Solver++(2M)'s idea on the angle ODE.

    Both heads are extrapolated linearly in phi from this call and the previous one, and the ODE is integrated
    exactly over the step: with h = phi' - phi and slopes dx0, deps,
        x' = x + (cos phi' - cos phi) x0 + (sin phi' - sin phi) eps
               + (h cos phi' - sin phi' + sin phi) dx0 + (h sin phi' + cos phi' - cos phi) deps.
    The first step has no history (slopes 0): it is DDIM, exact for constant heads.
    """
    previous = None
    for phi, phi_next in zip(phis[:-1], phis[1:]):
        x0, eps = denoise(x, phi)
        h = phi_next - phi
        x = x + (math.cos(phi_next) - math.cos(phi)) * x0 + (math.sin(phi_next) - math.sin(phi)) * eps
        if previous is not None:
            phi_prev, x0_prev, eps_prev = previous
            dx0, deps = (x0 - x0_prev) / (phi - phi_prev), (eps - eps_prev) / (phi - phi_prev)
            x = x + (h * math.cos(phi_next) - math.sin(phi_next) + math.sin(phi)) * dx0
            x = x + (h * math.sin(phi_next) + math.cos(phi_next) - math.cos(phi)) * deps
        previous = (phi, x0, eps)
    return x, x0


# ----------------------------------------------------------------------------------------------------------
# Flow samplers: x = (1 - t) noise + t data, dx/dt = v = data - noise
# ----------------------------------------------------------------------------------------------------------


def flow_euler(denoise, x: torch.Tensor, ts: Sequence[float]):
    """Euler steps on dx/dt = v from t = 0 (noise) to t = 1 (data)."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        v, x0 = denoise(x, t)
        x = x + (t_next - t) * v
    return x, x0


def flow_heun(denoise, x: torch.Tensor, ts: Sequence[float], correct_last: bool = True):
    """Heun's second-order method (EDM's Algorithm 1 without churn); two network calls a step.

    ``correct_last=False`` skips the correction on the last step, as EDM does: guided sampling needs it, since a
    guided x0_hat has no finite velocity at the data end t = 1.
    """
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v, x0 = denoise(x, t)
        x_next = x + (t_next - t) * v
        if correct_last or i < len(ts) - 2:
            v_next, x0 = denoise(x_next, t_next)
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = x_next
    return x, x0


# ----------------------------------------------------------------------------------------------------------
# The interface shared by both processes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    default_steps: int
    calls_per_step: int = 1


def normal(shape: Sequence[int], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal noise; with a list of generators, element i of the batch is drawn from generator i."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]).to(device)
    generator_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=generator_device).to(device)


def unit_times(batch: int, method: str, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Training times in [0, 1), each one uniform.

    ``uniform``: independent draws (the paper). ``stratified``: one draw in each of ``batch`` equal strata,
    assigned to the batch elements in random order. Every element is still uniform, so the loss keeps its
    expectation, but the batch covers all noise levels evenly, which lowers the variance of the batch loss
    (the loss scale varies strongly with the noise level).
    """
    u = torch.rand(batch, generator=generator, device=device)
    if method == "stratified":
        strata = torch.randperm(batch, generator=generator, device=device)
        u = (strata + u) / batch
    return u


class Diffusion:
    """What a process provides to the trainer and the sampler. Subclasses: IaN and rectified flow.

    A subclass defines ``signal_noise(t) -> (a, b)`` with x_t = a x0 + b z (z standard normal, t in network
    units), ``output_from_posterior`` (the network output of a perfect denoiser), the loss, its samplers.
    """

    process: str
    model_out_channels: int
    timestep_samplings = ("uniform", "stratified")
    noise_scale: float  # std of the pure-noise end of the process
    x0_position: int  # where x0_hat is in the pair that ``predict`` returns
    sampler_specs: dict[str, SamplerSpec]
    process_default_sampler: str

    def __init__(self, timestep_sampling: str = "uniform", sampler: str | None = None, sample_steps: int | None = None):
        if timestep_sampling not in self.timestep_samplings:
            raise ConfigError(
                f"diffusion.timestep_sampling={timestep_sampling!r} is unknown; valid: {', '.join(self.timestep_samplings)}"
            )
        self.timestep_sampling = timestep_sampling
        self.default_sampler = self.check_sampler(sampler) if sampler else self.process_default_sampler
        self.sample_steps = sample_steps

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(self.sampler_specs)

    def check_sampler(self, name: str) -> str:
        if name not in self.sampler_specs:
            raise ConfigError(
                f"sampler {name!r} does not exist for the {self.process} process; valid: {', '.join(self.samplers)}"
            )
        return name

    def default_steps(self, sampler: str) -> int:
        return self.sample_steps or self.sampler_specs[self.check_sampler(sampler)].default_steps

    def network_calls(self, sampler: str, steps: int) -> int:
        spec = self.sampler_specs[self.check_sampler(sampler)]
        return spec.calls_per_step * steps

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for network timesteps ``t`` [B] and standard-normal ``noise``."""
        a, b = (c.view(-1, *(1,) * (x0.dim() - 1)) for c in self.signal_noise(t.to(x0.device).float()))
        return a * x0 + b * noise

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_from_posterior(self, x0_hat: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """The network output for the posterior means E[x0 | x_t] and E[z | x_t]."""
        raise NotImplementedError

    def predict(self, model, x: torch.Tensor, time: float, guidance: Guidance | None):
        """One network call at process time ``time`` -> the pair the process's samplers use."""
        raise NotImplementedError

    def network_time(self, time: float) -> float:
        raise NotImplementedError

    def run_sampler(self, sampler: str, denoise, x: torch.Tensor, steps: int, draw: Callable[[], torch.Tensor], guided: bool):
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        model,
        shape: Sequence[int],
        sampler: str | None = None,
        steps: int | None = None,
        generator: Generators = None,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        return_x0: bool = False,
        guidance: Guidance | None = None,
        callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
    ):
        """Draw samples of ``shape`` [B, C, D, H, W] from pure noise; returns x (and the last x0_hat).

        ``generator`` is one torch.Generator or one per batch element (then element i's draws come from
        generator i only, so a seed's sample does not depend on its batch). ``noise`` is the standard-normal
        start (no draw is then made for it). ``guidance(x0_hat, t)`` replaces x0_hat at every network call
        before it is used (flow-heun then skips its last correction: one network call less); it runs under no_grad
        (enable gradients inside it if it needs them).
        ``callback(i, t, x, x0_hat)`` is called after network call i (t in network units), e.g. for previews.
        """
        sampler = self.check_sampler(sampler or self.default_sampler)
        steps = steps or self.default_steps(sampler)
        shape = tuple(shape)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
            device = noise.device
        elif isinstance(generator, Sequence):
            device = generator[0].device
        elif generator is not None:
            device = generator.device
        else:
            device = next((p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
        x = normal(shape, generator, device) if noise is None else noise.float()
        x = self.noise_scale * x
        bar = tqdm(total=self.network_calls(sampler, steps), desc=f"{sampler} ({steps} steps)", disable=not progress, leave=False)
        calls = 0

        def denoise(x: torch.Tensor, time: float):
            nonlocal calls
            first, second = self.predict(model, x, time, guidance)
            if callback is not None:
                callback(calls, self.network_time(time), x, (first, second)[self.x0_position])
            calls += 1
            bar.update()
            return first, second

        x, x0 = self.run_sampler(sampler, denoise, x, steps, lambda: normal(shape, generator, device), guidance is not None)
        bar.close()
        return (x, x0) if return_x0 else x


# ----------------------------------------------------------------------------------------------------------
# An exact "network" for testing and benchmarking samplers
# ----------------------------------------------------------------------------------------------------------


class MixtureDenoiser(torch.nn.Module):
    """The exact posterior-mean network of a process for data whose voxels are i.i.d. from a 1D Gaussian mixture.

    With x_t = a x0 + b z and component k ~ N(m_k, s_k^2) of weight w_k: x_t | k ~ N(a m_k, v_k), v_k = a^2 s_k^2
    + b^2, E[x0 | x_t, k] = m_k + a s_k^2 (x_t - a m_k) / v_k and E[z | x_t, k] = b (x_t - a m_k) / v_k, mixed
    with the posterior weights of k. One component is the Gaussian case. Called like the network: model(x, t).
    """

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
