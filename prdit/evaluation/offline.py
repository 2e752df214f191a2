"""Metrics that need no network weights: HU histogram distance, tissue fractions, radial power spectrum and
anatomy (:mod:`prdit.evaluation.anatomy`).

All take HU volumes ``[N, D, H, W]``. They are reproducible anywhere and complement the feature metrics, whose
numbers depend on the feature network's weights. Each set is first reduced to per-volume statistics
(:func:`volume_statistics`); the comparison (:func:`compare_statistics`) only aggregates them, so bootstrap
intervals (:func:`bootstrap_intervals`) resample volumes without recomputing masks or spectra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from prdit.evaluation import anatomy
from prdit.evaluation.descriptions import lookup
from prdit.hu import TISSUE_BANDS_HU

HISTOGRAM_RANGE = (-1100.0, 1500.0)  # HU; values outside are counted in the first/last bin
HISTOGRAM_BIN_HU = 10.0
HIGH_FREQUENCY = 0.25  # cycles/voxel; the upper half of the band up to Nyquist (0.5): shells k >= N/4
SPECTRUM_BINS = 32

Statistics = dict  # per-volume arrays, the output of volume_statistics


def _histogram_edges() -> np.ndarray:
    low, high = HISTOGRAM_RANGE
    return np.arange(low, high + HISTOGRAM_BIN_HU, HISTOGRAM_BIN_HU)


def _volume_histograms(volumes: np.ndarray) -> np.ndarray:
    """[N, bins] normalised histogram of each volume (values outside the range go to the first/last bin)."""
    edges = _histogram_edges()
    low, high = HISTOGRAM_RANGE
    counts = [np.histogram(np.clip(v, low, high - 1e-3), bins=edges)[0] for v in volumes]
    return np.stack(counts) / np.prod(volumes.shape[1:])


def _histogram_distance(p: np.ndarray, q: np.ndarray) -> dict:
    edges = _histogram_edges()
    centres = (edges[:-1] + edges[1:]) / 2
    return {
        "wasserstein_hu": float(wasserstein_distance(centres, centres, p, q)),
        "jensen_shannon_bits": float(jensenshannon(p, q, base=2) ** 2),
        "range_hu": list(HISTOGRAM_RANGE),
        "bin_hu": HISTOGRAM_BIN_HU,
    }


def tissue_fractions(volumes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-volume fraction of voxels in each tissue HU range (``TISSUE_BANDS_HU``): {tissue: [N]}."""
    flat = volumes.reshape(len(volumes), -1)
    return {name: ((flat >= low) & (flat < high)).mean(axis=1) for name, (low, high) in TISSUE_BANDS_HU.items()}


def _fraction_comparison(real_fractions: dict, fake_fractions: dict) -> dict:
    result: dict = {}
    for name, (low, high) in TISSUE_BANDS_HU.items():
        r, f = real_fractions[name], fake_fractions[name]
        result[name] = {
            "hu_range": [low, None if np.isinf(high) else high],
            "real_mean": float(r.mean()), "real_std": float(r.std()),
            "fake_mean": float(f.mean()), "fake_std": float(f.std()),
            "abs_difference": float(abs(r.mean() - f.mean())),
        }
    return result


def _spectrum(volume: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Radial power spectrum, bin centres, and the mean power of the frequencies above ``HIGH_FREQUENCY``."""
    volume = np.asarray(volume, dtype=np.float64)
    power = np.abs(np.fft.fftn(volume)) ** 2 / volume.size
    grids = np.meshgrid(*(np.fft.fftfreq(n) for n in volume.shape), indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    edges = np.linspace(0.0, 0.5, bins + 1)
    index = np.digitize(radius.ravel(), edges) - 1
    inside = (index >= 0) & (index < bins) & (radius.ravel() > 0)
    totals = np.bincount(index[inside], weights=power.ravel()[inside], minlength=bins)
    counts = np.bincount(index[inside], minlength=bins)
    high = (radius > HIGH_FREQUENCY) & (radius <= 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / counts, (edges[:-1] + edges[1:]) / 2, float(power[high].mean())


def _spectrum_distance(spectra_real: np.ndarray, spectra_fake: np.ndarray, high_real: np.ndarray, high_fake: np.ndarray) -> dict:
    """Spectrum comparison of two sets; P is the set's mean radial power spectrum in HU^2.

    ``log10_distance``: mean |log10 P_real(f) - log10 P_fake(f)| over radial frequency bins (1.0 = a tenfold
    mismatch); ``high_frequency_log10_distance``: the same over f > 0.25 cycles/voxel; ``high_frequency_power_ratio``:
    the generated set's mean power above 0.25 cycles/voxel over the real set's (1 = matched, < 1 = too smooth).
    The high frequencies measure fine detail (noise and texture), which PRDiT claims to model at voxel level.
    """
    mean_real, mean_fake = spectra_real.mean(axis=0), spectra_fake.mean(axis=0)
    bins = len(mean_real)
    centres = (np.arange(bins) + 0.5) * 0.5 / bins
    valid = np.isfinite(mean_real)
    floor = 1e-12 * max(np.nanmax(mean_real), np.nanmax(mean_fake), 1e-300)  # log10 of a constant volume
    gap = np.abs(np.log10(mean_real[valid] + floor) - np.log10(mean_fake[valid] + floor))
    high = centres[valid] > HIGH_FREQUENCY
    return {
        "log10_distance": float(gap.mean()),
        "high_frequency_log10_distance": float(gap[high].mean()),
        "high_frequency_power_ratio": float(high_fake.mean() / high_real.mean()) if high_real.mean() > 0 else float("nan"),
        "high_frequency_threshold": HIGH_FREQUENCY,
        "bins": bins,
        "frequency_unit": "cycles/voxel",
    }


# ----------------------------------------------------------------------------------------------------------
# Whole comparison from per-volume statistics, and bootstrap intervals
# ----------------------------------------------------------------------------------------------------------


def volume_statistics(volumes: np.ndarray, bins: int = SPECTRUM_BINS) -> Statistics:
    """Everything :func:`compare_statistics` needs, per volume (the expensive part: masks, FFTs, histograms)."""
    volumes = np.asarray(volumes, dtype=np.float32)
    spectra = [_spectrum(v, bins) for v in volumes]
    return {
        "histogram": _volume_histograms(volumes),
        "fractions": tissue_fractions(volumes),
        "spectrum": np.stack([s[0] for s in spectra]),
        "high_frequency_power": np.array([s[2] for s in spectra]),
        "anatomy": anatomy.set_features(volumes),
        "shape": list(volumes.shape[1:]),
    }


def compare_statistics(real: Statistics, fake: Statistics) -> dict:
    """The weightless metrics between two sets given by their :func:`volume_statistics`."""
    if real["shape"] != fake["shape"]:
        raise ValueError(f"volume shapes differ: real {tuple(real['shape'])}, fake {tuple(fake['shape'])}")
    return {
        "hu_histogram": _histogram_distance(real["histogram"].mean(axis=0), fake["histogram"].mean(axis=0)),
        "tissue_fractions": _fraction_comparison(real["fractions"], fake["fractions"]),
        "power_spectrum": _spectrum_distance(real["spectrum"], fake["spectrum"], real["high_frequency_power"], fake["high_frequency_power"]),
        "anatomy": anatomy.compare_features(real["anatomy"], fake["anatomy"]),
    }


def offline_metrics(real: np.ndarray, fake: np.ndarray) -> dict:
    """All weightless metrics between HU sets ``real`` and ``fake`` ([N, D, H, W], same voxel shape)."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"volume shapes differ: real {real.shape[1:]}, fake {fake.shape[1:]}")
    return compare_statistics(volume_statistics(real), volume_statistics(fake))


def real_floor(real: Statistics, seed: int = 0) -> dict:
    """The comparison between two random halves of the real set: what a perfect generator scores (at N/2)."""
    n = len(real["histogram"])
    if n < 4:
        raise ValueError(f"the real-vs-real floor needs at least 4 real volumes, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return compare_statistics(select(real, order[: n // 2]), select(real, order[n // 2 :]))


def select(statistics: Statistics, index: np.ndarray) -> Statistics:
    """The statistics of the volumes ``index`` (repeats allowed: a bootstrap resample)."""
    return {key: ({k: v[index] for k, v in value.items()} if isinstance(value, dict) else
                  value if key == "shape" else value[index]) for key, value in statistics.items()}


def bootstrap_intervals(
    real: Statistics, fake: Statistics, keys: Sequence[str], resamples: int = 1000, level: float = 0.95, seed: int = 0,
    compare: Callable[[Statistics, Statistics], dict] = compare_statistics,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the metrics ``keys`` (dotted keys of :func:`compare_statistics`' result).

    Both sets are resampled with replacement, independently, ``resamples`` times: the interval covers the
    sampling noise of the generated set and of the real reference alike.
    """
    rng = np.random.default_rng(seed)
    n_real, n_fake = len(real["histogram"]), len(fake["histogram"])
    values: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(resamples):
        result = compare(select(real, rng.integers(0, n_real, n_real)), select(fake, rng.integers(0, n_fake, n_fake)))
        for key in keys:
            value = lookup(result, key)
            values[key].append(np.nan if value is None else value)
    tail = (1 - level) / 2
    bounds = {key: np.nanquantile(v, [tail, 1 - tail]) for key, v in values.items()}
    return {key: (float(low), float(high)) for key, (low, high) in bounds.items()}
