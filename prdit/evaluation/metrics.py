"""Feature-set distances (Fréchet distance, MMD) and MS-SSIM diversity, all in float64 where it matters.

Fréchet distance: ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})``. The cross term is computed
without a general (possibly complex) matrix square root: ``tr((S_a S_b)^{1/2})`` equals the nuclear norm of
``A B^T / sqrt((n_a - 1)(n_b - 1))`` for centred feature matrices A, B (cheap and exact when there are fewer
samples than dimensions, the usual case for 3D CT), or ``sum sqrt(eig(S_a^{1/2} S_b S_a^{1/2}))`` with symmetric
eigendecompositions otherwise. Both are real by construction.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Literal

import numpy as np
import torch

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
MS_SSIM_KERNEL = 11
MS_SSIM_PAPER_KERNEL = 3  # the paper's evaluation (MultiScaleSSIMMetric(kernel_size=3)): numbers comparable with its table
MS_SSIM_SIGMA = 1.5


def _as_features(feats: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name}: expected a [N >= 2, dim] feature matrix, got shape {array.shape}")
    return array.astype(np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    n = min(a.shape[0], b.shape[0])
    if n < a.shape[1]:
        warnings.warn(
            f"only {n} samples for {a.shape[1]}-d features: the covariance is rank-deficient and the estimate is "
            "biased upwards; compare numbers only at equal N",
            stacklevel=3,
        )


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``tr((S_a S_b)^{1/2})`` for symmetric PSD matrices, via ``S_a^{1/2} S_b S_a^{1/2}`` (symmetric, real)."""
    root_a = _sqrt_psd(np.asarray(sigma_a, dtype=np.float64))
    middle = root_a @ np.asarray(sigma_b, dtype=np.float64) @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())


def frechet_distance_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt_product(sigma_a, sigma_b)
    return float(max(value, 0.0))  # only rounding can make it negative


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor) -> float:
    """FID-style Fréchet distance between two [N, dim] feature sets (unbiased covariances, float64)."""
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _check_pair(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    n_a, n_b, dim = a.shape[0], b.shape[0], a.shape[1]
    if min(n_a, n_b) > dim:
        cov_a, cov_b = centred_a.T @ centred_a / (n_a - 1), centred_b.T @ centred_b / (n_b - 1)
        return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)
    # Non-zero eigenvalues of S_a S_b are the squared singular values of A B^T / sqrt((n_a-1)(n_b-1)).
    cross = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / math.sqrt((n_a - 1) * (n_b - 1))
    value = np.sum((mu_a - mu_b) ** 2) + np.sum(centred_a**2) / (n_a - 1) + np.sum(centred_b**2) / (n_b - 1) - 2 * cross
    return float(max(value, 0.0))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    distances = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T
    return np.clip(distances, 0.0, None)


def median_heuristic_gamma(feats_real: np.ndarray | torch.Tensor) -> float:
    """RBF gamma = 1 / (2 * median squared distance between distinct pairs of the *real* features)."""
    x = _as_features(feats_real, "feats_real")
    upper = _squared_distances(x, x)[np.triu_indices(x.shape[0], k=1)]
    median = float(np.median(upper))
    if median <= 0:
        raise ValueError("all real features are identical: the median-heuristic bandwidth is undefined")
    return 1.0 / (2.0 * median)


def mmd2(
    feats_a: np.ndarray | torch.Tensor,
    feats_b: np.ndarray | torch.Tensor,
    kernel: Literal["rbf", "linear"] = "rbf",
    biased: bool = True,
    gamma: float | None = None,
) -> float:
    """Squared MMD between real ``feats_a`` and generated ``feats_b`` (may be negative when unbiased).

    ``kernel="rbf"``: ``exp(-gamma |x - y|^2)`` with ``gamma`` defaulting to :func:`median_heuristic_gamma` of
    ``feats_a``; ``"linear"``: ``x . y`` (biased MMD^2 is then exactly ``|mu_a - mu_b|^2``). ``biased=True`` is the
    V-statistic (diagonals included), ``False`` the unbiased U-statistic.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _check_pair(a, b)
    if kernel == "rbf":
        gamma = median_heuristic_gamma(a) if gamma is None else gamma
        k_aa, k_bb, k_ab = (np.exp(-gamma * _squared_distances(x, y)) for x, y in ((a, a), (b, b), (a, b)))
    elif kernel == "linear":
        k_aa, k_bb, k_ab = a @ a.T, b @ b.T, a @ b.T
    else:
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
    n, m = a.shape[0], b.shape[0]
    if biased:
        return float(k_aa.mean() + k_bb.mean() - 2 * k_ab.mean())
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def mmd(
    feats_a: np.ndarray | torch.Tensor,
    feats_b: np.ndarray | torch.Tensor,
    kernel: Literal["rbf", "linear"] = "rbf",
    biased: bool = True,
    gamma: float | None = None,
) -> float:
    """Reported MMD: ``sqrt(max(MMD^2, 0))`` (the paper's protocol with the defaults: biased RBF, median gamma)."""
    return math.sqrt(max(mmd2(feats_a, feats_b, kernel=kernel, biased=biased, gamma=gamma), 0.0))


def ms_ssim_scales(shape: tuple[int, ...], kernel_size: int = MS_SSIM_KERNEL) -> int:
    """Number of MS-SSIM scales (at most 5) that a volume of ``shape`` supports.

    The largest n such that (a) the coarsest scale is at least one kernel wide, ``min_side / 2^(n-1) >= kernel``,
    and (b) MONAI's own check ``min_side // max(1, n-1)^2 > kernel - 1`` passes. 32^3 -> 2 scales, 64^3 -> 3,
    128^3 -> 4, 256^3 -> 5, 16^3 -> 1 (plain SSIM). The first n standard weights are used, renormalised to sum 1.
    """
    side = min(shape)
    for n in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if side / 2 ** (n - 1) >= kernel_size and side // max(1, n - 1) ** 2 > kernel_size - 1:
            return n
    raise ValueError(f"volumes of shape {tuple(shape)} are smaller than the {kernel_size}-voxel SSIM kernel")


def ms_ssim_diversity(
    volumes: np.ndarray | torch.Tensor, max_pairs: int = 100, seed: int = 0, batch_voxels: int = 2**21,
    kernel_size: int = MS_SSIM_KERNEL,
) -> dict:
    """Mean 3D MS-SSIM over *unordered* pairs (i < j) of volumes in [-1, 1], shape [N, D, H, W] (lower = more diverse).

    MS-SSIM is symmetric, so ordered pairs would count each pair twice (the paper's script loops over ordered
    pairs: the same mean). With more than ``max_pairs`` pairs, a seeded random subset is used. Pairs are batched
    up to ``batch_voxels`` voxels per side of the comparison. ``kernel_size`` is the Gaussian window (11, the
    usual SSIM window; the paper used 3, :data:`MS_SSIM_PAPER_KERNEL`). Returns the mean, its standard
    deviation, the pair count and the scales used.
    """
    from monai.metrics.regression import compute_ms_ssim

    x = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, torch.Tensor) else volumes, dtype=torch.float32)
    if x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"expected at least 2 volumes [N, D, H, W], got shape {tuple(x.shape)}")
    pairs = list(itertools.combinations(range(x.shape[0]), 2))
    if len(pairs) > max_pairs:
        chosen = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    scales = ms_ssim_scales(tuple(x.shape[1:]), kernel_size)
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    unit = ((x.clamp(-1, 1) + 1) / 2).unsqueeze(1)  # [0, 1], data_range 1
    batch_size = max(1, batch_voxels // int(np.prod(x.shape[1:])))
    values = []
    for start in range(0, len(pairs), batch_size):
        first, second = zip(*pairs[start : start + batch_size])
        score = compute_ms_ssim(unit[list(first)], unit[list(second)], spatial_dims=3, data_range=1.0,
                                kernel_size=kernel_size, kernel_sigma=MS_SSIM_SIGMA, weights=tuple(weights))
        values.append(score.flatten())
    scores = torch.cat(values).double().numpy()
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "pairs": len(pairs),
        "pairing": "unordered (i < j)",
        "scales": scales,
        "weights": [round(float(w), 6) for w in weights],
        "kernel": f"gaussian {kernel_size}^3, sigma {MS_SSIM_SIGMA}",
        "data_range": "[-1, 1] mapped to [0, 1]",
    }
