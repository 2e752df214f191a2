"""Reconstruction metrics against closed forms."""

import math

import pytest
import torch

from prdit.inverse.metrics import data_consistency, psnr, ssim, tissue_errors
from prdit.inverse.operators import SuperResolution

WINDOW = (-1000.0, 1000.0)


def test_psnr_of_a_constant_offset_and_of_clipped_values():
    truth = torch.linspace(-900, 900, 4096).view(1, 1, 16, 16, 16)
    assert psnr(truth + 20, truth, WINDOW) == pytest.approx(20 * math.log10(2000 / 20))
    assert psnr(truth, truth, WINDOW) == math.inf
    assert psnr(torch.full_like(truth, 5000.0), torch.full_like(truth, 1000.0), WINDOW) == math.inf  # both clip to 1000


def test_ssim_is_one_for_identical_volumes_and_lower_for_noise():
    truth = torch.linspace(-900, 900, 4096).view(1, 1, 16, 16, 16)
    assert ssim(truth, truth, WINDOW) == pytest.approx(1.0, abs=1e-6)
    noisy = truth + 200 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    assert ssim(noisy, truth, WINDOW) < 0.9


def test_tissue_errors_report_bias_with_its_sign_per_band():
    truth = torch.tensor([-1000.0, -800.0, 40.0, 600.0]).view(1, 1, 1, 1, 4)
    estimate = truth + torch.tensor([0.0, -30.0, 10.0, 50.0]).view(1, 1, 1, 1, 4)
    errors = tissue_errors(estimate, truth)
    assert errors["air"] == {"mae": 0.0, "bias": 0.0, "voxels": 1}
    assert errors["lung"]["bias"] == -30.0 and errors["lung"]["mae"] == 30.0
    assert errors["soft_tissue"]["bias"] == 10.0 and errors["bone"]["mae"] == 50.0


def test_data_consistency_is_zero_for_the_truth():
    op = SuperResolution(2)
    truth = torch.randn(1, 1, 8, 8, 8) * 100
    y = op(truth)
    assert data_consistency(op, truth, y) == pytest.approx(0.0, abs=1e-6)
    assert data_consistency(op, torch.zeros_like(truth), y) == pytest.approx(1.0)
