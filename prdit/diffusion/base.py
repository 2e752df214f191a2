"""The interface both diffusion processes share, and the table each keeps of its samplers.

A process defines its forward noising (``signal_noise``), its loss, one network call (``predict``), its time
grid, and a table ``{name: SamplerSpec}``; sampling, the sampler defaults and the progress bar live here, once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from prdit.errors import ConfigError

Generators = torch.Generator | Sequence[torch.Generator] | None
Guidance = Callable[[torch.Tensor, float], torch.Tensor]
Sampler = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler of a process: its function (see :mod:`prdit.diffusion.samplers`), its default number of steps,
    its network calls per step, and the variant used under guidance when it differs."""

    fn: Sampler
    default_steps: int
    calls_per_step: int = 1
    guided_fn: Sampler | None = None


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


def call_model(model, x: torch.Tensor, t: torch.Tensor, condition=None) -> torch.Tensor:
    """``model(x, t)``, with ``condition=`` only when there is one (unconditional networks take none)."""
    return model(x, t) if condition is None else model(x, t, condition=condition)


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
    sampler_specs: dict[str, SamplerSpec]  # the process's samplers by name
    process_default_sampler: str

    def __init__(self, timestep_sampling: str = "uniform", sampler: str | None = None, sample_steps: int | None = None):
        if timestep_sampling not in self.timestep_samplings:
            raise ConfigError(
                f"diffusion.timestep_sampling={timestep_sampling!r} is unknown; valid: {', '.join(self.timestep_samplings)}"
            )
        if sample_steps is not None and sample_steps < 1:
            raise ConfigError(f"diffusion.sample_steps={sample_steps} must be at least 1 (or null: the sampler's default)")
        self.timestep_sampling = timestep_sampling
        self.default_sampler = self.check_sampler(sampler) if sampler else self.process_default_sampler
        self.sample_steps = sample_steps

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(self.sampler_specs)

    def check_sampler(self, name: str) -> str:
        if name not in self.sampler_specs:
            close = difflib.get_close_matches(str(name), self.samplers, n=1, cutoff=0.4)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"sampler {name!r} does not exist for the {self.process} process; {hint}valid: {', '.join(self.samplers)}"
            )
        return name

    def resolve(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The sampler and number of steps a request means: the configured (or the process's) default sampler,
        then ``diffusion.sample_steps`` or that sampler's own default number of steps."""
        name = self.check_sampler(sampler or self.default_sampler)
        return name, steps or self.sample_steps or self.sampler_specs[name].default_steps

    def network_calls(self, sampler: str, steps: int, grid: str = "prdit") -> int:
        """Network calls of ``sampler`` with ``steps`` on a time grid (``paper``: one per time of the paper's grid)."""
        spec = self.sampler_specs[self.check_sampler(sampler)]
        return spec.calls_per_step * (steps if grid == "prdit" else len(self.time_grid(steps, grid)) - 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for network timesteps ``t`` [B] and standard-normal ``noise``."""
        a, b = (c.view(-1, *(1,) * (x0.dim() - 1)) for c in self.signal_noise(t.to(x0.device).float()))
        return a * x0 + b * noise

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_from_posterior(self, x0_hat: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """The network output for the posterior means E[x0 | x_t] and E[z | x_t]."""
        raise NotImplementedError

    def training_loss(
        self, model, x0: torch.Tensor, generator: torch.Generator | None = None, condition=None
    ) -> torch.Tensor:
        """The training loss of ``model`` on clean volumes ``x0`` at random times (and noise) from ``generator``;
        ``condition``: a conditional model's :class:`prdit.models.Condition` of the batch."""
        raise NotImplementedError

    def predict_x0(self, model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0_hat of one network call at network timesteps ``t``."""
        raise NotImplementedError

    def noise_level_timestep(self, level: float) -> float:
        """The network timestep of noise level ``level`` (0 clean, 1 pure noise), comparable across processes."""
        raise NotImplementedError

    def predict(self, model, x: torch.Tensor, time: float, guidance: Guidance | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call at process time ``time`` -> the pair the process's samplers use."""
        raise NotImplementedError

    def network_time(self, time: float) -> float:
        raise NotImplementedError

    def time_grid(self, steps: int, grid: str = "prdit") -> list[float]:
        """The sampling times in the process's own units, from pure noise to data (``steps + 1`` of them on
        prdit's grid; ``grid="paper"``: the paper code's grid, IaN only)."""
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
        grid: str = "prdit",
    ):
        """Draw samples of ``shape`` [B, C, D, H, W] from pure noise; returns x (and the last x0_hat).

        ``generator`` is one torch.Generator or one per batch element (then element i's draws come from
        generator i only, so a seed's sample does not depend on its batch). ``noise`` is the standard-normal
        start (no draw is then made for it). ``guidance(x0_hat, t)`` replaces x0_hat at every network call
        before it is used (flow-heun then skips its last correction: one network call less); it runs under no_grad
        (enable gradients inside it if it needs them).
        ``callback(i, t, x, x0_hat)`` is called after network call i (t in network units), e.g. for previews.
        ``grid="paper"`` (IaN only) walks the paper code's time grid instead of prdit's (see
        :meth:`prdit.diffusion.IaNDiffusion.angles`), which reproduces the official samplers exactly.
        """
        if grid not in ("prdit", "paper"):
            raise ConfigError(f"time grid {grid!r} is unknown; valid: prdit, paper")
        sampler, steps = self.resolve(sampler, steps)
        spec = self.sampler_specs[sampler]
        times = self.time_grid(steps, grid)
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
        bar = tqdm(total=self.network_calls(sampler, steps, grid), desc=f"{sampler} ({steps} steps)", disable=not progress, leave=False)
        calls = 0

        def denoise(x: torch.Tensor, time: float):
            nonlocal calls
            first, second = self.predict(model, x, time, guidance)
            if callback is not None:
                callback(calls, self.network_time(time), x, (first, second)[self.x0_position])
            calls += 1
            bar.update()
            return first, second

        run = spec.guided_fn if guidance is not None and spec.guided_fn is not None else spec.fn
        x, x0 = run(denoise, x, times, lambda: normal(shape, generator, device))
        bar.close()
        return (x, x0) if return_x0 else x
