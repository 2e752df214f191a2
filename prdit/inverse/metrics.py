"""Reconstruction quality against a known truth: PSNR and SSIM over a HU window, tissue-band errors, data consistency."""

from __future__ import annotations

import math

import torch

from prdit.inverse.operators import Operator

#: HU window the image metrics are computed over (values are clipped to it first).
METRIC_WINDOW = (-1000.0, 1000.0)
#: Tissue bands by the truth's HU: [low, high).
TISSUE_BANDS: dict[str, tuple[float, float]] = {
    "air": (-math.inf, -950.0),
    "lung": (-950.0, -500.0),
    "fat_soft": (-200.0, 150.0),
    "bone": (150.0, math.inf),
}


def psnr(estimate: torch.Tensor, truth: torch.Tensor, window: tuple[float, float] = METRIC_WINDOW) -> float:
    """Peak signal-to-noise ratio (dB) with both clipped to ``window`` and its width as the peak."""
    low, high = window
    mse = float(((estimate.clamp(low, high) - truth.clamp(low, high)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10((high - low) ** 2 / mse)


def ssim(estimate: torch.Tensor, truth: torch.Tensor, window: tuple[float, float] = METRIC_WINDOW) -> float:
    """3D SSIM (MONAI, Gaussian 7^3 window) of [1, 1, D, H, W] volumes clipped to ``window``."""
    from monai.metrics.regression import SSIMMetric

    low, high = window
    scale = lambda v: (v.float().clamp(low, high) - low) / (high - low)  # noqa: E731
    metric = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7)
    return float(torch.as_tensor(metric(scale(estimate), scale(truth))).mean())


def tissue_errors(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per band of :data:`TISSUE_BANDS` (by the truth's HU): mean absolute error and signed mean error (bias), HU."""
    out = {}
    for band, (low, high) in TISSUE_BANDS.items():
        inside = (truth >= low) & (truth < high)
        if inside.any():
            error = (estimate - truth)[inside]
            out[band] = {"mae": float(error.abs().mean()), "bias": float(error.mean()), "voxels": int(inside.sum())}
    return out


def data_consistency(op: Operator, estimate: torch.Tensor, y: torch.Tensor) -> float:
    """||A x_hat - y|| / ||y||."""
    return float(torch.linalg.vector_norm(op(estimate) - y) / torch.linalg.vector_norm(y).clamp(min=1e-12))


def reconstruction_metrics(op: Operator, estimate: torch.Tensor, truth: torch.Tensor, y: torch.Tensor) -> dict:
    """All of the above for one [1, 1, D, H, W] HU reconstruction."""
    return {
        "psnr": psnr(estimate, truth),
        "ssim": ssim(estimate, truth),
        "tissue": tissue_errors(estimate, truth),
        "data_consistency": data_consistency(op, estimate, y),
    }
