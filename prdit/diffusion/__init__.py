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

from pydantic import ValidationError

from prdit.config import DiffusionConfig
from prdit.diffusion.flow import FlowDiffusion
from prdit.diffusion.gaussian_diffusion import IaNDiffusion
from prdit.diffusion.base import Diffusion, SamplerSpec
from prdit.errors import ConfigError


def create_diffusion(config: Any = None, **overrides: Any) -> Diffusion:
    """The process a ``DiffusionConfig`` (or any object with its fields, e.g. a checkpoint's) describes."""
    if config is None:
        values = {}
    elif isinstance(config, DiffusionConfig):
        values = config.model_dump()
    else:
        values = {key: value for key, value in vars(config).items() if key in DiffusionConfig.model_fields}
    values.update(overrides)
    try:
        config = DiffusionConfig(**values)
    except ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"diffusion.{key}: {problem['msg']}") from None
    options = dict(
        timestep_sampling=config.timestep_sampling, sampler=config.sampler, sample_steps=config.sample_steps
    )
    if config.process == "flow":
        return FlowDiffusion(**options)
    return IaNDiffusion(timesteps=config.timesteps, noise_std=config.noise_std, **options)


__all__ = ["create_diffusion", "Diffusion", "SamplerSpec", "IaNDiffusion", "FlowDiffusion"]
