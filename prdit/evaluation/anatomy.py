"""Anatomy-aware chest-CT metrics that need no network weights.

Each volume ``[z, y, x]`` in HU (LPS: z index 0 is inferior) is reduced to a few numbers a radiologist would
check first, computed from threshold masks:

- **body mask**: voxels above -500 HU, the largest connected component (the scanner table is a separate one),
  holes filled slice by slice (the lungs are inside the body in every axial slice);
- **lung mask**: air (below -500 HU) inside the filled body, airways included;
- tissue fractions per **organ band** (inferior, middle and superior thirds along z: abdomen/diaphragm, mid
  chest, upper chest), the mean HU of each tissue inside the body, and shape statistics of both masks.

A generated set is compared with a real one feature by feature: the difference of the set means, and that
difference in units of the real set's spread (the standardised difference, 0 = identical means). Their mean
over all features is one anatomy score (lower is better).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from prdit.data.volume_ops import filled_body
from prdit.hu import BODY_THRESHOLD_HU, TISSUE_BANDS_HU

# Fractions are of all voxels in the field of view (air outside the body included).
BANDS = ("inferior", "middle", "superior")  # thirds of the z axis, index 0 = inferior in LPS arrays
MIN_LUNG_COMPONENT = 0.05  # a lung component counts when it holds at least this share of the lung mask
BODY_TISSUES = tuple(tissue for tissue in TISSUE_BANDS_HU if tissue != "lung")  # lung HU comes from the lung mask

# feature -> (name in words, unit). Every feature is "closer to the real set's value is better".
FEATURES: dict[str, tuple[str, str]] = {
    "body_fraction": ("body volume, fraction of the field of view", ""),
    "lung_fraction_of_body": ("lung volume, fraction of the body", ""),
    "lung_components": ("lung pieces holding >= 5% of the lung volume", "count"),
    "lung_balance": ("smaller / larger lung half (left vs right of the midline)", ""),
    "lung_extent_z": ("axial slices that contain lung, fraction", ""),
    "body_width": ("body extent left-right, fraction of the field of view", ""),
    "body_depth": ("body extent front-back, fraction of the field of view", ""),
    "body_surface_ratio": ("body surface voxels / body voxels (roughness of the outline)", ""),
    "lung_mask_mean_hu": ("mean HU inside the lung mask", "HU"),
    "lung_mask_std_hu": ("HU spread inside the lung mask (vessels and texture)", "HU"),
    **{f"{tissue}_mean_hu": (f"mean HU of the {tissue.replace('_', '-')} voxels in the body outside the lungs", "HU")
       for tissue in BODY_TISSUES},
    **{f"{band}_{tissue}_fraction": (f"{tissue.replace('_', '-')} fraction of the {band} third", "")
       for band in BANDS for tissue in TISSUE_BANDS_HU},
}


def body_and_lung_masks(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean body (filled) and lung masks of one HU volume ``[z, y, x]``."""
    filled = filled_body(volume)
    return filled, filled & ~(volume > BODY_THRESHOLD_HU)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def volume_features(volume: np.ndarray) -> dict[str, float]:
    """The :data:`FEATURES` of one HU volume (NaN where a mask is empty, e.g. the HU of absent lungs)."""
    volume = np.asarray(volume, dtype=np.float32)
    body, lungs = body_and_lung_masks(volume)
    depth, height, width = volume.shape
    body_voxels, lung_voxels = int(body.sum()), int(lungs.sum())
    features: dict[str, float] = {
        "body_fraction": body_voxels / volume.size,
        "lung_fraction_of_body": lung_voxels / body_voxels if body_voxels else 0.0,
    }
    labels, count = ndimage.label(lungs)
    sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(0)
    features["lung_components"] = float((sizes >= MIN_LUNG_COMPONENT * max(lung_voxels, 1)).sum())
    left, right = lungs[..., : width // 2].sum(), lungs[..., width - width // 2 :].sum()
    features["lung_balance"] = float(min(left, right) / max(left, right)) if max(left, right) else 0.0
    features["lung_extent_z"] = float(lungs.any(axis=(1, 2)).mean())
    columns, rows = body.any(axis=(0, 1)), body.any(axis=(0, 2))
    features["body_width"] = float(np.ptp(np.flatnonzero(columns)) + 1) / width if columns.any() else 0.0
    features["body_depth"] = float(np.ptp(np.flatnonzero(rows)) + 1) / height if rows.any() else 0.0
    surface = body & ~ndimage.binary_erosion(body)
    features["body_surface_ratio"] = float(surface.sum() / body_voxels) if body_voxels else 0.0
    features["lung_mask_mean_hu"] = _mean(volume[lungs])
    features["lung_mask_std_hu"] = float(volume[lungs].std()) if lung_voxels else float("nan")
    inside = volume[body & ~lungs]
    for tissue in BODY_TISSUES:
        low, high = TISSUE_BANDS_HU[tissue]
        features[f"{tissue}_mean_hu"] = _mean(inside[(inside >= low) & (inside < high)])
    for band, slab in zip(BANDS, np.array_split(volume, len(BANDS), axis=0)):
        for tissue, (low, high) in TISSUE_BANDS_HU.items():
            features[f"{band}_{tissue}_fraction"] = float(((slab >= low) & (slab < high)).mean())
    return features


def set_features(volumes: np.ndarray) -> dict[str, np.ndarray]:
    """{feature: [N]} for a set of HU volumes ``[N, z, y, x]``."""
    rows = [volume_features(v) for v in volumes]
    return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in FEATURES}


def compare_features(real: dict[str, np.ndarray], fake: dict[str, np.ndarray]) -> dict:
    """Per feature: both sets' mean and std, |mean difference| and |mean difference| / real std; the mean of
    the standardised differences is ``score`` (lower is better; NaN values, e.g. HU of absent lungs, are skipped
    and counted in ``fake_missing``)."""
    result: dict = {"features": {}}
    standardised: list[float] = []
    for name, (words, unit) in FEATURES.items():
        r, f = real[name][np.isfinite(real[name])], fake[name][np.isfinite(fake[name])]
        if not len(r) or not len(f):
            result["features"][name] = {"about": words, "unit": unit, "fake_missing": int(len(fake[name]) - len(f))}
            continue
        difference = abs(float(f.mean() - r.mean()))
        spread = float(r.std())
        standardised_difference = difference / spread if spread > 0 else (0.0 if difference == 0 else float("inf"))
        entry = {
            "about": words, "unit": unit,
            "real_mean": float(r.mean()), "real_std": spread, "fake_mean": float(f.mean()), "fake_std": float(f.std()),
            "abs_difference": difference,
            "standardised_difference": standardised_difference,
            "fake_missing": int(len(fake[name]) - len(f)),
        }
        result["features"][name] = entry
        if math.isfinite(standardised_difference):
            standardised.append(standardised_difference)
    result["score"] = float(np.mean(standardised)) if standardised else float("nan")
    return result
