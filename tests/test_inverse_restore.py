"""Pipeline.restore with the shipped prior: the identity operator returns the measurement, each restore depends only
on its seed, the posterior mean and std are over the samples, bad measurements give one-line errors."""

import pytest
import torch

from prdit.data.phantom import generate_phantom
from prdit.demo import SHIPPED_WEIGHTS
from prdit.errors import PrditError
from prdit.inverse import DataConsistency, Identity, Inpainting, SparseViewXray, SuperResolution
from prdit.inverse.metrics import psnr
from prdit.sample import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline(SHIPPED_WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def truth(pipeline):
    volume, _ = generate_phantom(pipeline.input_size, 10_000)  # held out: training uses seeds 0-199
    return torch.from_numpy(volume)[None, None].clamp(-1000, 1000)


def test_identity_guidance_without_noise_returns_the_measurement(pipeline, truth):
    restored = pipeline.restore(truth, Identity(), steps=3)
    torch.testing.assert_close(restored, truth, rtol=0, atol=0.05)
    # unguided, the same call samples the prior: far from the measurement
    free = pipeline.restore(truth, Identity(), steps=3, guidance=DataConsistency(iterations=0))
    assert float((free - truth).abs().mean()) > 50


def test_restore_depends_only_on_its_seed(pipeline, truth):
    op = SuperResolution(4)
    y = op(truth)
    first = pipeline.restore(y, op, steps=4, seed=3)
    torch.testing.assert_close(pipeline.restore(y[0], op, steps=4, seed=3), first, rtol=0, atol=0)
    assert not torch.equal(pipeline.restore(y, op, steps=4, seed=4), first)
    mean, std = pipeline.restore(y, op, steps=4, seed=3, num_samples=2, return_std=True, batch_size=1)
    second = pipeline.restore(y, op, steps=4, seed=4)
    torch.testing.assert_close(mean, (first + second) / 2, rtol=0, atol=1e-3)
    torch.testing.assert_close(std, (first - second).abs() / 2, rtol=0, atol=1e-3)
    assert mean.shape == std.shape == truth.shape and float(std.max()) > 0
    # one batch of 2 against two batches of 1: the same numbers up to float rounding (~1e-6 of the HU scale)
    torch.testing.assert_close(pipeline.restore(y, op, steps=4, seed=3, num_samples=2), mean, rtol=0, atol=5e-3)


def test_restoration_beats_the_baseline_on_super_resolution(pipeline, truth):
    op = SuperResolution(2)
    y = op(truth)
    window = pipeline.mapping.hu_range()
    assert psnr(pipeline.restore(y, op, steps=10), truth, window) > psnr(op.baseline(y), truth, window) + 1.0


def test_bad_measurements_are_one_line_errors(pipeline, truth):
    size = pipeline.input_size
    cases = [
        (lambda: pipeline.restore(truth[..., :-1], Identity()), "does not fit identity"),
        (lambda: pipeline.restore(truth.repeat(2, 1, 1, 1, 1), Identity()), "one measurement at a time"),
        (lambda: pipeline.restore(truth, Inpainting(torch.ones(size, size, size - 2))), "mask has shape"),
        (lambda: pipeline.restore(torch.full_like(truth, float("nan")), Identity()), "NaN"),
        (lambda: pipeline.restore(torch.zeros(1, 3, size, 7), SparseViewXray([0.0, 90.0], (size,) * 3)), "does not fit xray"),
        (lambda: pipeline.restore(truth, Identity(), num_samples=0), "num_samples must be a positive integer"),
        (lambda: pipeline.restore(truth, "identity"), "needs a prdit.inverse operator"),
    ]
    for call, message in cases:
        with pytest.raises(PrditError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
