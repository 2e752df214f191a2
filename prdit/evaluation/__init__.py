"""Evaluation of generated CT volumes: 3D FID and MMD on MedicalNet features, MS-SSIM diversity, a WGAN-GP
Wasserstein critic, and weightless HU/tissue/spectrum metrics. Every result carries the protocol it was computed
under (set sizes, weights, intensity convention, normalisation, sizes, kernel), because numbers computed under
different protocols are not comparable.

>>> from prdit.evaluation import evaluate_sets
>>> report = evaluate_sets(real_hu_volumes, fake_hu_volumes)          # doctest: +SKIP
>>> report["fid"], report["mmd"], report["protocol"]["weights"]         # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module

# name -> module: imported on first use, so that importing the package (and `prdit --help`) loads no torch or scipy
_LAZY = {
    "MedicalNetFeatures": "prdit.evaluation.medicalnet",
    "VolumeSet": "prdit.evaluation.data",
    "load_volume_set": "prdit.evaluation.data",
    "compare_features": "prdit.evaluation.evaluate",
    "evaluate_floor": "prdit.evaluation.evaluate",
    "evaluate_sets": "prdit.evaluation.evaluate",
    "feature_metrics": "prdit.evaluation.evaluate",
    "set_features": "prdit.evaluation.evaluate",
    "frechet_distance": "prdit.evaluation.metrics",
    "mmd": "prdit.evaluation.metrics",
    "mmd2": "prdit.evaluation.metrics",
    "ms_ssim_diversity": "prdit.evaluation.metrics",
    "offline_metrics": "prdit.evaluation.offline",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prdit.evaluation' has no attribute {name!r}")
