"""prdit.diffusion: the paper's image-and-noise process and rectified flow behind one interface.

>>> from prdit.diffusion import create_diffusion
>>> diffusion = create_diffusion(config.diffusion)           # or create_diffusion(process="flow")
>>> loss = diffusion.training_loss(model, x0, generator=g)
>>> x = diffusion.sample(model, (2, 1, 64, 64, 64), sampler="ian-2m", steps=50, generator=g)

Samplers (network calls per volume for ``steps``): ian-euler and ian-pc (the paper's; steps), ian-2m
(few-step second-order multistep, the IaN default; steps), flow-euler (steps), flow-heun (the flow default;
2 * steps).
"""

from __future__ import annotations

from typing import Any

from prdit.diffusion.base import Diffusion, SamplerSpec
from prdit.diffusion.flow import FlowDiffusion
from prdit.diffusion.gaussian_diffusion import IaNDiffusion
from prdit.errors import ConfigError

PROCESSES: dict[str, type[Diffusion]] = {"ian": IaNDiffusion, "flow": FlowDiffusion}
SETTINGS = ("process", "timesteps", "noise_std", "timestep_sampling", "sampler", "sample_steps")
_IAN_ONLY = ("timesteps", "noise_std")


def create_diffusion(config: Any = None, **overrides: Any) -> Diffusion:
    """The process a ``DiffusionConfig`` (or any object with its fields, e.g. a checkpoint's) describes, with
    keyword overrides. The process checks its own settings (and sampler name); errors name the key."""
    values = {} if config is None else {key: value for key, value in vars(config).items() if key in SETTINGS}
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown diffusion setting(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
    values.update(overrides)
    process = values.pop("process", "ian")
    if process not in PROCESSES:
        raise ConfigError(f"diffusion.process={process!r} is unknown; valid: {', '.join(PROCESSES)}")
    if process != "ian":
        values = {key: value for key, value in values.items() if key not in _IAN_ONLY}
    return PROCESSES[process](**values)


__all__ = ["create_diffusion", "Diffusion", "SamplerSpec", "IaNDiffusion", "FlowDiffusion", "PROCESSES"]
