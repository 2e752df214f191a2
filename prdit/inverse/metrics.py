"""Reconstruction quality against a known truth: PSNR and SSIM over the prior's HU window (the range its samples
can take: ``pipeline.mapping.hu_range()``), tissue-band errors, data consistency."""

from __future__ import annotations

import math

import torch

from prdit.hu import TISSUE_BANDS_HU
from prdit.inverse.operators import Operator

#: Bands by the truth's HU, [low, high): air below the lung band, then the tissue bands of every metric.
ERROR_BANDS_HU: dict[str, tuple[float, float]] = {"air": (-math.inf, TISSUE_BANDS_HU["lung"][0]), **TISSUE_BANDS_HU}


def psnr(estimate: torch.Tensor, truth: torch.Tensor, window: tuple[float, float]) -> float:
    """Peak signal-to-noise ratio (dB) with both clipped to ``window`` and its width as the peak."""
    low, high = window
    mse = float(((estimate.clamp(low, high) - truth.clamp(low, high)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10((high - low) ** 2 / mse)


def ssim(estimate: torch.Tensor, truth: torch.Tensor, window: tuple[float, float]) -> float:
    """3D SSIM (MONAI, Gaussian 7^3 window) of [1, 1, D, H, W] volumes clipped to ``window``."""
    from monai.metrics.regression import SSIMMetric

    low, high = window
    scale = lambda v: (v.float().clamp(low, high) - low) / (high - low)  # noqa: E731
    metric = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7)
    return float(torch.as_tensor(metric(scale(estimate), scale(truth))).mean())


def tissue_errors(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per band of :data:`ERROR_BANDS_HU` (by the truth's HU): mean absolute error and signed mean error (bias), HU."""
    out = {}
    for band, (low, high) in ERROR_BANDS_HU.items():
        inside = (truth >= low) & (truth < high)
        if inside.any():
            error = (estimate - truth)[inside]
            out[band] = {"mae": float(error.abs().mean()), "bias": float(error.mean()), "voxels": int(inside.sum())}
    return out


def data_consistency(op: Operator, estimate: torch.Tensor, y: torch.Tensor) -> float:
    """||A x_hat - y|| / ||y||."""
    return float(torch.linalg.vector_norm(op(estimate) - y) / torch.linalg.vector_norm(y).clamp(min=1e-12))


def reconstruction_metrics(
    op: Operator, estimate: torch.Tensor, truth: torch.Tensor, y: torch.Tensor, window: tuple[float, float]
) -> dict:
    """All of the above for one [1, 1, D, H, W] HU reconstruction; PSNR and SSIM over ``window`` (the prior's)."""
    return {
        "window_hu": [float(window[0]), float(window[1])],
        "psnr": psnr(estimate, truth, window),
        "ssim": ssim(estimate, truth, window),
        "tissue": tissue_errors(estimate, truth),
        "data_consistency": data_consistency(op, estimate, y),
    }
