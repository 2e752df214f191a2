import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import wasserstein_distance

from prdit.evaluation.offline import (
    SPECTRUM_BINS,
    bootstrap_intervals,
    compare_statistics,
    offline_metrics,
    select,
    tissue_fractions,
    volume_statistics,
)


def histogram_distance(real: np.ndarray, fake: np.ndarray) -> dict:
    return compare_statistics(volume_statistics(real), volume_statistics(fake))["hu_histogram"]


def power_spectrum_distance(real: np.ndarray, fake: np.ndarray) -> dict:
    return compare_statistics(volume_statistics(real), volume_statistics(fake))["power_spectrum"]


def test_histogram_distance_is_zero_for_a_set_with_itself_and_equals_a_hu_shift(rng):
    real = rng.uniform(-800, 800, size=(3, 16, 16, 16)).astype(np.float32)
    assert histogram_distance(real, real)["wasserstein_hu"] == pytest.approx(0.0, abs=1e-9)
    assert histogram_distance(real, real)["jensen_shannon_bits"] == pytest.approx(0.0, abs=1e-9)
    # a shift by a whole number of 10 HU bins moves every bin by exactly that many HU
    assert histogram_distance(real, real + 50.0)["wasserstein_hu"] == pytest.approx(50.0, abs=1e-6)


def test_tissue_fractions_of_a_volume_with_known_composition():
    volume = np.empty((4, 8, 8), dtype=np.float32)
    volume[0], volume[1], volume[2], volume[3] = -700.0, -100.0, 40.0, 1000.0  # lung, fat, soft tissue, bone
    fractions = tissue_fractions(volume[None])
    for tissue in ("lung", "fat", "soft_tissue", "bone"):
        assert fractions[tissue][0] == pytest.approx(0.25)
    boundary = np.full((1, 4, 4, 4), -500.0, dtype=np.float32)  # ranges are half-open: -500 HU is not lung
    assert tissue_fractions(boundary)["lung"][0] == 0.0


def test_radial_power_spectrum_peaks_at_the_frequency_of_a_cosine():
    x = np.arange(32)
    volume = np.broadcast_to(np.cos(2 * np.pi * 0.25 * x), (32, 32, 32))
    spectrum = volume_statistics(volume[None])["spectrum"][0]
    centres = (np.arange(SPECTRUM_BINS) + 0.5) * 0.5 / SPECTRUM_BINS  # cycles/voxel
    assert abs(centres[np.nanargmax(spectrum)] - 0.25) <= 0.5 / SPECTRUM_BINS


def test_power_spectrum_distance_of_a_tenfold_amplitude_is_two_decades(rng):
    real = rng.normal(size=(3, 16, 16, 16))
    result = power_spectrum_distance(real, 10 * real)
    assert result["log10_distance"] == pytest.approx(2.0, abs=1e-6)  # volume_statistics works in float32
    assert result["high_frequency_log10_distance"] == pytest.approx(2.0, abs=1e-6)


def test_smoothing_is_a_high_frequency_loss(rng):
    real = rng.normal(size=(3, 16, 16, 16)) * 100
    smooth = np.stack([gaussian_filter(v, 1.0) for v in real])
    other_noise = rng.normal(size=(3, 16, 16, 16)) * 100
    blurred, matched = power_spectrum_distance(real, smooth), power_spectrum_distance(real, other_noise)
    assert blurred["high_frequency_log10_distance"] > blurred["log10_distance"] > 10 * matched["log10_distance"]


def test_offline_metrics_reports_every_part_and_checks_shapes(rng):
    real = rng.normal(size=(2, 16, 16, 16)) * 300
    report = offline_metrics(real, real)
    assert set(report) == {"hu_histogram", "tissue_fractions", "power_spectrum", "anatomy"}
    assert report["power_spectrum"]["high_frequency_power_ratio"] == pytest.approx(1.0)
    assert report["anatomy"]["score"] == 0.0
    assert all(entry["abs_difference"] == 0.0 for entry in report["tissue_fractions"].values())
    with pytest.raises(ValueError, match="shapes differ"):
        offline_metrics(real, real[:, :8])


def test_high_frequency_power_ratio_is_the_power_ratio_above_a_quarter_cycle(rng):
    real = rng.normal(size=(3, 16, 16, 16)) * 100
    assert power_spectrum_distance(real, 2 * real)["high_frequency_power_ratio"] == pytest.approx(4.0)
    # a low-pass filter that removes every frequency above 0.25 cycles/voxel leaves no high-frequency power
    spectrum = np.fft.fftn(real, axes=(1, 2, 3))
    radius = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(16)] * 3, indexing="ij")))
    low_passed = np.real(np.fft.ifftn(spectrum * (radius <= 0.25), axes=(1, 2, 3)))
    assert power_spectrum_distance(real, low_passed)["high_frequency_power_ratio"] == pytest.approx(0.0, abs=1e-12)
    smooth = np.stack([gaussian_filter(v, 1.0) for v in real])
    assert 0 < power_spectrum_distance(real, smooth)["high_frequency_power_ratio"] < 0.2


def test_statistics_resample_and_bootstrap_intervals_cover_a_known_shift(rng):
    real = rng.uniform(-800, 800, size=(12, 16, 16, 16)).astype(np.float32)
    fake = rng.uniform(-800, 800, size=(12, 16, 16, 16)).astype(np.float32) + 50.0
    real_stats, fake_stats = volume_statistics(real), volume_statistics(fake)
    pooled = [np.histogram(np.clip(v, -1100, 1500 - 1e-3), bins=np.arange(-1100, 1510, 10))[0] for v in (real, fake)]
    centres = np.arange(-1095, 1500, 10)
    expected = wasserstein_distance(centres, centres, *pooled)
    assert compare_statistics(real_stats, fake_stats)["hu_histogram"]["wasserstein_hu"] == pytest.approx(expected)
    twice_first = select(real_stats, np.array([0, 0]))
    assert compare_statistics(twice_first, volume_statistics(real[[0, 0]])) == compare_statistics(
        volume_statistics(real[:1]), volume_statistics(real[:1]))
    intervals = bootstrap_intervals(real_stats, fake_stats, ["hu_histogram.wasserstein_hu", "anatomy.score"], resamples=50)
    low, high = intervals["hu_histogram.wasserstein_hu"]
    assert low < 50.0 < high and high - low < 20.0  # the histograms differ only by the 50 HU shift and sampling noise
    same = bootstrap_intervals(real_stats, real_stats, ["hu_histogram.wasserstein_hu"], resamples=50)
    assert same["hu_histogram.wasserstein_hu"][1] < 10.0
