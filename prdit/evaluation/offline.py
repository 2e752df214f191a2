"""Metrics that need no network weights: HU histogram distance, tissue fractions, radial power spectrum.

All take HU volumes ``[N, D, H, W]``. They are reproducible anywhere and complement the feature metrics, whose
numbers depend on the feature network's weights.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

HISTOGRAM_RANGE = (-1100.0, 1500.0)  # HU; values outside are counted in the first/last bin
HISTOGRAM_BIN_HU = 10.0
# Half-open HU ranges [low, high). Fractions are of all voxels in the field of view (air outside the body included).
TISSUE_RANGES = {
    "lung": (-950.0, -500.0),
    "fat": (-190.0, -30.0),
    "soft_tissue": (-30.0, 150.0),
    "bone": (300.0, float("inf")),
}
HIGH_FREQUENCY = 0.25  # cycles/voxel; the upper half of the band up to Nyquist (0.5)
SPECTRUM_BINS = 32


def hu_histogram(volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pooled HU histogram of a set and its bin centres (``HISTOGRAM_BIN_HU`` HU bins)."""
    low, high = HISTOGRAM_RANGE
    edges = np.arange(low, high + HISTOGRAM_BIN_HU, HISTOGRAM_BIN_HU)
    counts, _ = np.histogram(np.clip(volumes, low, high - 1e-3), bins=edges)
    return counts / counts.sum(), (edges[:-1] + edges[1:]) / 2


def hu_histogram_distance(real: np.ndarray, fake: np.ndarray) -> dict:
    """Wasserstein-1 distance (in HU) and Jensen-Shannon divergence (bits) between the pooled HU histograms."""
    p, centres = hu_histogram(real)
    q, _ = hu_histogram(fake)
    return {
        "wasserstein_hu": float(wasserstein_distance(centres, centres, p, q)),
        "jensen_shannon_bits": float(jensenshannon(p, q, base=2) ** 2),
        "range_hu": list(HISTOGRAM_RANGE),
        "bin_hu": HISTOGRAM_BIN_HU,
    }


def tissue_fractions(volumes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-volume fraction of voxels in each tissue HU range (``TISSUE_RANGES``): {tissue: [N]}."""
    flat = volumes.reshape(len(volumes), -1)
    return {name: ((flat >= low) & (flat < high)).mean(axis=1) for name, (low, high) in TISSUE_RANGES.items()}


def tissue_fraction_comparison(real: np.ndarray, fake: np.ndarray) -> dict:
    """Mean and std of each tissue fraction in both sets, and the absolute difference of the means."""
    real_fractions, fake_fractions = tissue_fractions(real), tissue_fractions(fake)
    result: dict = {}
    for name, (low, high) in TISSUE_RANGES.items():
        r, f = real_fractions[name], fake_fractions[name]
        result[name] = {
            "hu_range": [low, None if np.isinf(high) else high],
            "real_mean": float(r.mean()), "real_std": float(r.std()),
            "fake_mean": float(f.mean()), "fake_std": float(f.std()),
            "abs_difference": float(abs(r.mean() - f.mean())),
        }
    return result


def radial_power_spectrum(volume: np.ndarray, bins: int = SPECTRUM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 3D power spectrum of one volume and its bin centres in cycles/voxel (<= 0.5).

    The zero frequency (the mean) is left out; bins that no frequency of this grid falls in are NaN.
    """
    volume = np.asarray(volume, dtype=np.float64)
    power = np.abs(np.fft.fftn(volume)) ** 2 / volume.size
    grids = np.meshgrid(*(np.fft.fftfreq(n) for n in volume.shape), indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    edges = np.linspace(0.0, 0.5, bins + 1)
    index = np.digitize(radius.ravel(), edges) - 1
    inside = (index >= 0) & (index < bins) & (radius.ravel() > 0)
    totals = np.bincount(index[inside], weights=power.ravel()[inside], minlength=bins)
    counts = np.bincount(index[inside], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / counts, (edges[:-1] + edges[1:]) / 2


def power_spectrum_distance(real: np.ndarray, fake: np.ndarray, bins: int = SPECTRUM_BINS) -> dict:
    """Mean |log10 P_real(f) - log10 P_fake(f)| over radial frequency bins, over all and over f > 0.25 cycles/voxel.

    P is the set's mean radial power spectrum in HU^2. The high-frequency part measures fine detail (noise and
    texture), which PRDiT claims to model at voxel level; 1.0 means a tenfold power mismatch.
    """
    spectra_real = np.mean([radial_power_spectrum(v, bins)[0] for v in real], axis=0)
    spectra_fake = np.mean([radial_power_spectrum(v, bins)[0] for v in fake], axis=0)
    _, centres = radial_power_spectrum(real[0], bins)
    valid = np.isfinite(spectra_real)
    floor = 1e-12 * max(np.nanmax(spectra_real), np.nanmax(spectra_fake), 1e-300)  # log10 of a constant volume
    gap = np.abs(np.log10(spectra_real[valid] + floor) - np.log10(spectra_fake[valid] + floor))
    high = centres[valid] > HIGH_FREQUENCY
    return {
        "log10_distance": float(gap.mean()),
        "high_frequency_log10_distance": float(gap[high].mean()),
        "high_frequency_threshold": HIGH_FREQUENCY,
        "bins": bins,
        "frequency_unit": "cycles/voxel",
    }


def offline_metrics(real: np.ndarray, fake: np.ndarray) -> dict:
    """All weightless metrics between HU sets ``real`` and ``fake`` ([N, D, H, W], same voxel shape)."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"volume shapes differ: real {real.shape[1:]}, fake {fake.shape[1:]}")
    return {
        "hu_histogram": hu_histogram_distance(real, fake),
        "tissue_fractions": tissue_fraction_comparison(real, fake),
        "power_spectrum": power_spectrum_distance(real, fake),
    }
