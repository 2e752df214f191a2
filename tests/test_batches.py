"""The training sample stream does not depend on the process count or on where a run was resumed."""

import pytest
import torch

from prdit.errors import ConfigError
from prdit.train.batches import EpochPermutation, StepBatchSampler, batch_layout, noise_generator


def stream(global_batch: int, world_size: int, micro: int, start: int, total: int) -> dict[int, list[int]]:
    """step -> the global positions used at that step, gathered over all ranks."""
    per_step: dict[int, list[int]] = {}
    for rank in range(world_size):
        sampler = StepBatchSampler(global_batch, rank, world_size, micro, start, total)
        batches = iter(sampler)
        for step in range(start, total):
            for _ in sampler.micro_offsets(step):
                per_step.setdefault(step, []).extend(next(batches))
    return {step: sorted(positions) for step, positions in per_step.items()}


def test_layout_splits_global_batch_and_rejects_what_does_not_divide():
    assert batch_layout(64, 4, None) == (16, 1)
    assert batch_layout(64, 2, 8) == (8, 4)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        batch_layout(64, 3, None)
    with pytest.raises(ConfigError, match="micro_batch_size=5"):
        batch_layout(8, 1, 5)


def test_two_ranks_see_the_same_samples_as_one_rank_with_accumulation():
    assert stream(8, 1, 2, 0, 5) == stream(8, 2, 4, 0, 5) == stream(8, 4, 1, 0, 5)


def test_resumed_stream_continues_where_it_stopped():
    full = stream(4, 1, 2, 0, 10)
    resumed = stream(4, 1, 2, 6, 10)
    assert resumed == {step: full[step] for step in range(6, 10)}


def test_every_epoch_is_a_permutation_and_epochs_differ():
    order = EpochPermutation(10, seed=3)
    first = [order(p)[1] for p in range(10)]
    second = [order(p)[1] for p in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert [order(p) for p in range(20)] == [EpochPermutation(10, seed=3)(p) for p in range(20)]


def test_noise_generator_depends_on_position_only():
    device = torch.device("cpu")
    a = torch.randn(5, generator=noise_generator(42, 16, device))
    b = torch.randn(5, generator=noise_generator(42, 16, device))
    c = torch.randn(5, generator=noise_generator(42, 17, device))
    assert torch.equal(a, b) and not torch.equal(a, c)
