"""The training sample stream: which volume goes into which micro-batch at every step, on every rank.

Positions ``0, 1, 2, ...`` run through epochs of a seeded permutation of the dataset. Step ``s`` takes the
global positions ``[s*G, (s+1)*G)``; rank ``r`` takes its contiguous share and splits it into micro-batches.
So a step's samples, and the noise drawn for them (seeded by the micro-batch's global offset), do not depend
on the number of processes or on where a run was resumed: resumed runs continue exactly, and 2 ranks equal
1 rank with accumulation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from prdit.errors import ConfigError
from prdit.models.condition import Condition


def batch_layout(global_batch: int, world_size: int, micro_batch: int | None) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) per rank; errors say which numbers do not divide."""
    if global_batch % world_size:
        raise ConfigError(
            f"training.global_batch_size={global_batch} is not divisible by the {world_size} processes; "
            "choose a multiple of the process count"
        )
    local = global_batch // world_size
    micro = micro_batch or local
    if local % micro:
        raise ConfigError(
            f"per-process batch {local} (global {global_batch} / {world_size} processes) is not a multiple of "
            f"training.micro_batch_size={micro}"
        )
    return micro, local // micro


class EpochPermutation:
    """Position -> (epoch, dataset index) through a fresh seeded permutation each epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed

    @lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        return epoch, int(self.permutation(epoch)[offset])


class StreamDataset(Dataset):
    """Wraps a :class:`VolumeDataset`: item ``position`` is the stream's volume there, with that epoch's flips."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset = dataset
        self.order = EpochPermutation(len(dataset), seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> torch.Tensor:
        epoch, index = self.order(position)
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of stream positions from ``start_step`` to ``total_steps``."""

    def __init__(self, global_batch: int, rank: int, world_size: int, micro_batch: int, start_step: int, total_steps: int):
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.micro_batch = micro_batch
        self.start_step = start_step
        self.total_steps = total_steps

    def micro_offsets(self, step: int) -> list[int]:
        """Global stream position of each of this rank's micro-batches at ``step``."""
        first = step * self.global_batch + self.rank * self.local_batch
        return list(range(first, first + self.local_batch, self.micro_batch))

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            for offset in self.micro_offsets(step):
                yield list(range(offset, offset + self.micro_batch))

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * (self.local_batch // self.micro_batch)


def noise_generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    """The generator of the diffusion noise and timesteps of the micro-batch starting at stream ``position``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.default_rng([seed, position, 7]).integers(2**62)))
    return generator


def split_batch(batch, source, device: torch.device) -> tuple[torch.Tensor, Condition | None]:
    """A loader batch -> (x0 on ``device``, its :class:`Condition` or None). ``source``: the dataset's
    :class:`prdit.data.dataset.ConditionSource` (None for an unconditional dataset, whose batches are tensors)."""
    if source is None:
        return batch.to(device, non_blocking=True), None
    x0 = batch["x0"].to(device, non_blocking=True)
    names = source.model_labels
    labels = Condition.from_label_map(batch["labels"].to(device), [source.label_values[n] for n in names]) if names else None
    attributes = batch["attributes"].to(device) if source.attributes else None
    return x0, Condition(labels, attributes, None if attributes is None else torch.ones_like(attributes))
