"""Every metric between a real and a generated set, each result with the protocol it was computed under."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from prdit.evaluation.data import (
    DEFAULT_CACHE_DIR,
    INTENSITY_LABEL,
    ResizePolicy,
    Space,
    VolumeSet,
    cache_key,
    check_same_shape,
    load_cached_features,
    load_volume_set,
    save_cached_features,
)
from prdit.evaluation.medicalnet import FEATURE_DIM, MedicalNetFeatures, extract_features
from prdit.evaluation.metrics import frechet_distance, median_heuristic_gamma, mmd, mmd2, ms_ssim_diversity
from prdit.evaluation.offline import offline_metrics

FEATURE_NETWORK = "MedicalNet 3D ResNet-50, global average pool of layer4 (2048-d)"
SetSource = str | os.PathLike | Sequence[np.ndarray | str | os.PathLike]


def input_space(real: VolumeSet, fake: VolumeSet, space: Space) -> str:
    """How the files' intensities were read: HU, or model space and the mapping that brought each set back to HU."""
    if space == "hu":
        return "HU"
    described = {s.mapping.describe() for s in (real, fake) if s.mapping is not None}
    via = described.pop() if len(described) == 1 else f"real: {real.mapping.describe()}, fake: {fake.mapping.describe()}"  # type: ignore[union-attr]
    return f"model space, mapped back to HU through the generating model's mapping ({via})"


def base_protocol(real: VolumeSet, fake: VolumeSet, space: Space, resize: ResizePolicy) -> dict:
    """The data part of the protocol: set sizes and sources, intensity convention, sizes and resizing."""
    return {
        "n_real": len(real),
        "n_fake": len(fake),
        "real_source": real.source,
        "fake_source": fake.source,
        "input_space": input_space(real, fake, space),
        "intensity": INTENSITY_LABEL,
        "image_size": list(real.shape),
        "resize": resize,
        "resized_volumes": {"real": len(real.resized_from), "fake": len(fake.resized_from)},
    }


def set_features(
    volume_set: VolumeSet,
    extractor: MedicalNetFeatures,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
    cache_dir: Path | None = None,
    desc: str = "features",
) -> tuple[np.ndarray, str]:
    """MedicalNet features of a set, read from / written to ``cache_dir`` when the set is made of files.

    Returns the features and ``"hit"``, ``"miss"`` or ``"off"`` (no cache dir, or an in-memory set).
    """
    protocol = {"network": FEATURE_NETWORK, "weights": extractor.weights, "normalization": extractor.normalization,
                "intensity": INTENSITY_LABEL, "shape": list(volume_set.shape), "resized": [list(s) for s in volume_set.resized_from]}
    key = cache_key(volume_set, protocol) if cache_dir is not None else None
    cached = load_cached_features(cache_dir, key) if cache_dir is not None and key else None
    if cached is not None and len(cached) == len(volume_set):
        return cached, "hit"
    features = extract_features(extractor, volume_set.model_space(), batch_size=batch_size, device=device, progress=progress, desc=desc)
    if cache_dir is not None and key:
        save_cached_features(cache_dir, key, features, protocol)
    return features, "miss" if key else "off"


def feature_metrics(real_features: np.ndarray, fake_features: np.ndarray) -> tuple[dict, dict]:
    """FID and the MMD variants of two feature sets, and the metric part of the protocol (with its warnings)."""
    notes = []
    n = min(len(real_features), len(fake_features))
    if n < real_features.shape[1]:
        notes.append(f"N = {n} is below the feature dimension {real_features.shape[1]}: covariances are rank-deficient, "
                     "FID is biased upwards and only comparable at equal N")
        warnings.warn(notes[-1], stacklevel=3)
    gamma = median_heuristic_gamma(real_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported once above
        results = {
            "fid": frechet_distance(real_features, fake_features),
            "mmd": mmd(real_features, fake_features, kernel="rbf", biased=True, gamma=gamma),
            "mmd2_rbf_biased": mmd2(real_features, fake_features, kernel="rbf", biased=True, gamma=gamma),
            "mmd2_rbf_unbiased": mmd2(real_features, fake_features, kernel="rbf", biased=False, gamma=gamma),
            "mmd2_linear_biased": mmd2(real_features, fake_features, kernel="linear", biased=True),
            "mmd2_linear_unbiased": mmd2(real_features, fake_features, kernel="linear", biased=False),
        }
    protocol = {
        "fid": "Fréchet distance of the feature Gaussians, unbiased covariances, float64, eigendecomposition-based "
               "matrix square root (real by construction)",
        "mmd": "paper protocol: sqrt(max(biased RBF MMD^2, 0)), gamma = 1 / (2 * median pairwise squared distance of the real features)",
        "mmd_gamma": gamma,
        "warnings": notes,
    }
    return results, protocol


def compare_features(
    real: VolumeSet,
    fake: VolumeSet,
    extractor: MedicalNetFeatures,
    space: Space = "hu",
    resize: ResizePolicy = "error",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
    cache_dir: Path | None = None,
) -> dict:
    """FID and MMD between two loaded sets, with the full protocol under ``"protocol"``."""
    check_same_shape(real, fake)
    real_features, cache_state = set_features(real, extractor, batch_size, device, progress, cache_dir, "real features")
    fake_features, _ = set_features(fake, extractor, batch_size, device, progress, None, "fake features")
    results, metric_protocol = feature_metrics(real_features, fake_features)
    results["protocol"] = {
        **base_protocol(real, fake, space, resize),
        "feature_network": FEATURE_NETWORK,
        "weights": extractor.weights,
        "weights_sha256": extractor.weights_sha256,
        "normalization": extractor.normalization,
        "feature_dim": FEATURE_DIM,
        "real_feature_cache": cache_state,
        **metric_protocol,
    }
    return results


def evaluate_sets(
    real: SetSource,
    fake: SetSource,
    pretrain_path: str | os.PathLike | None = None,
    spacing: tuple[float, float, float] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    normalization: Literal["none", "zscore"] = "none",
    space: Space = "hu",
    img_size: int | None = None,
    resize: ResizePolicy = "error",
    batch_size: int = 4,
    cache_dir: str | os.PathLike | None = None,
    max_ms_ssim_pairs: int = 50,
) -> dict:
    """Every metric between a real and a generated set, with the protocol, as a JSON-serialisable dict.

    ``real``/``fake``: lists of HU volumes ``[z, y, x]`` or of paths, or a folder/list file (see
    :func:`prdit.evaluation.data.load_volume_set`). ``spacing`` (sz, sy, sx) mm is recorded in the protocol.
    Real-set features of file sets are cached in ``cache_dir`` (default ``~/.cache/prdit``). MS-SSIM uses at most
    ``max_ms_ssim_pairs`` random unordered pairs per set (its dense 11^3 Gaussian filters dominate the CPU time).
    Keys: ``fid``, ``mmd`` (paper protocol) and the other MMD estimators, ``ms_ssim`` (fake and real diversity),
    ``offline`` (HU histogram, tissue fractions, power spectrum) and ``protocol``.
    """
    real_set = load_volume_set(real, space=space, size=img_size, resize=resize, name="real")
    fake_set = load_volume_set(fake, space=space, size=img_size, resize=resize, name="fake")
    check_same_shape(real_set, fake_set)
    extractor = MedicalNetFeatures(pretrain_path, normalization=normalization)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    results = compare_features(real_set, fake_set, extractor, space, resize, batch_size, device, progress, cache)
    results["ms_ssim"] = {
        "fake": ms_ssim_diversity(fake_set.model_space(), max_pairs=max_ms_ssim_pairs) if len(fake_set) > 1 else None,
        "real": ms_ssim_diversity(real_set.model_space(), max_pairs=max_ms_ssim_pairs) if len(real_set) > 1 else None,
    }
    results["offline"] = offline_metrics(real_set.volumes, fake_set.volumes)
    results["protocol"]["spacing_mm"] = list(spacing) if spacing is not None else None
    # keep the protocol last in the JSON, after every number it qualifies
    results["protocol"] = results.pop("protocol")
    return results


def evaluate_floor(real: SetSource, space: Space = "hu", img_size: int | None = None, resize: ResizePolicy = "error",
                   **options) -> dict | None:
    """The real-vs-real floor: :func:`evaluate_sets` between the even- and odd-numbered volumes of the real set.

    A perfect generator scores about this (at N/2 volumes per side, so N-dependent metrics such as FID sit a little
    higher than at N). ``options`` go to :func:`evaluate_sets`. None when the real set has fewer than 4 volumes.
    """
    volumes = load_volume_set(real, space=space, size=img_size, resize=resize, name="real").volumes
    if len(volumes) < 4:
        return None
    return evaluate_sets(list(volumes[0::2]), list(volumes[1::2]), **options)
