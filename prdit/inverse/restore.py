"""Posterior sampling: a frozen PRDiT, a measurement and its operator -> restored HU volumes (``Pipeline.restore``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from prdit.errors import PrditError
from prdit.inverse.guidance import DataConsistency, measurement_guidance
from prdit.inverse.operators import Operator
from prdit.runtime import autocast_for


def linear_maps(mapping) -> tuple[Callable, Callable]:
    """Model space <-> HU without the clipping of ``to_hu``: guidance moves estimates that may leave the range."""
    try:
        low, high = mapping.hu_range()
    except ValueError:
        raise PrditError("this checkpoint's intensity mapping has no HU range (paper mode without reference_range)") from None
    bottom, top = mapping.model_range
    scale = (high - low) / (top - bottom)
    return (lambda x: low + (x - bottom) * scale), (lambda h: bottom + (h - low) / scale)


def as_guidance(guidance: DataConsistency | int | None) -> DataConsistency:
    if guidance is None:
        return DataConsistency()
    if isinstance(guidance, DataConsistency):
        return guidance
    return DataConsistency(iterations=guidance)


def sample_posterior(
    pipeline, y: torch.Tensor, op: Operator, steps: int | None = None, sampler: str | None = None, seed: int = 0,
    num_samples: int = 1, guidance: DataConsistency | int | None = None, return_std: bool = False,
    batch_size: int | None = None, progress: bool = False, return_samples: bool = False, condition=None,
):
    """See :meth:`prdit.sample.Pipeline.restore`: the posterior mean [1, 1, D, H, W] in HU (and its std), or with
    ``return_samples`` the samples themselves [num_samples, 1, D, H, W]. ``condition``: a conditional model's
    :class:`prdit.conditioning.SampleCondition` (a label map and attributes as a second prior constraint)."""
    if not isinstance(op, Operator):
        raise PrditError(f"restore needs a prdit.inverse operator, got {type(op).__name__}")
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise PrditError(f"num_samples must be a positive integer, got {num_samples!r}")
    config = as_guidance(guidance)
    volume_shape = (1, pipeline.model.in_channels) + (pipeline.input_size,) * 3
    y = torch.as_tensor(y, dtype=torch.float32)
    if y.dim() == len(op.measurement_shape(volume_shape)) - 1:
        y = y.unsqueeze(0)
    if y.shape[0] != 1:
        raise PrditError(f"restore takes one measurement at a time, got a batch of {y.shape[0]}")
    op.check_measurement(y, volume_shape)
    if not torch.isfinite(y).all():
        raise PrditError("the measurement contains NaN or infinite values")
    to_hu, to_model = linear_maps(pipeline.mapping)
    guide = measurement_guidance(op, y.to(pipeline.device), to_hu=to_hu, to_model=to_model, config=config)
    seeds = list(range(seed, seed + int(num_samples)))
    batch_size = batch_size or len(seeds)
    volumes = []
    for start in tqdm(range(0, len(seeds), batch_size), desc="restoring", disable=not progress):
        chunk = seeds[start : start + batch_size]
        noise = torch.cat([pipeline.initial_noise(s) for s in chunk]).to(pipeline.device)
        generators = [torch.Generator(device=pipeline.device).manual_seed(s + 1) for s in chunk]
        with autocast_for(pipeline.precision, pipeline.device):
            _, x0 = pipeline.diffusion.sample(
                pipeline.network(len(chunk), condition), tuple(noise.shape), sampler=sampler, steps=steps, generator=generators, noise=noise,
                progress=progress and len(seeds) == 1, return_x0=True, guidance=guide,
            )
        volumes.append(pipeline.mapping.to_hu(x0.float().cpu()))
    samples = torch.cat(volumes)
    if return_samples:
        return samples
    mean = samples.mean(0, keepdim=True)
    if return_std:
        return mean, samples.std(0, keepdim=True, unbiased=False)
    return mean
