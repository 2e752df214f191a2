import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from prdit.evaluation.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    median_heuristic_gamma,
    mmd,
    mmd2,
    ms_ssim_diversity,
    ms_ssim_scales,
)


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _closed_form_fd(mu_a, sigma_a, mu_b, sigma_b):
    cross = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * cross))


def test_frechet_distance_from_stats_equals_the_closed_form(rng):
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    sigma_a, sigma_b = _random_spd(rng, 6), _random_spd(rng, 6)
    assert frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(_closed_form_fd(mu_a, sigma_a, mu_b, sigma_b), rel=1e-9)
    # diagonal covariances: sum (mu_a - mu_b)^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_stats(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_gaussian_samples_approaches_the_closed_form(rng):
    mu_a, mu_b = np.zeros(3), np.array([1.0, -0.5, 0.0])
    sigma_a, sigma_b = _random_spd(rng, 3), _random_spd(rng, 3)
    a = rng.multivariate_normal(mu_a, sigma_a, size=40000)
    b = rng.multivariate_normal(mu_b, sigma_b, size=40000)
    assert frechet_distance(a, b) == pytest.approx(_closed_form_fd(mu_a, sigma_a, mu_b, sigma_b), rel=0.03)


def test_frechet_distance_of_a_set_with_itself_is_zero(rng):
    feats = rng.normal(size=(12, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
        assert frechet_distance(torch.from_numpy(feats), torch.from_numpy(feats)) == pytest.approx(0.0, abs=1e-9)


def test_few_samples_route_equals_covariance_route_and_warns(rng):
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(14, 40)) + 0.2
    with pytest.warns(UserWarning, match="rank-deficient"):
        value = frechet_distance(a, b)
    reference = frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert value == pytest.approx(reference, rel=1e-6)
    assert isinstance(value, float) and math.isfinite(value)


def test_frechet_distance_rejects_mismatched_dimensions(rng):
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))


def test_median_heuristic_gamma_on_known_points():
    points = np.array([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4 -> median 4
    assert median_heuristic_gamma(points) == pytest.approx(1 / 8)


def _brute_force_mmd2(a, b, kernel, biased):
    n, m = len(a), len(b)
    xx = [kernel(a[i], a[j]) for i in range(n) for j in range(n) if biased or i != j]
    yy = [kernel(b[i], b[j]) for i in range(m) for j in range(m) if biased or i != j]
    xy = [kernel(x, y) for x in a for y in b]
    return np.mean(xx) + np.mean(yy) - 2 * np.mean(xy)


@pytest.mark.parametrize("biased", [True, False])
def test_mmd2_matches_the_definition(rng, biased):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(5, 4)) + 0.3
    gamma = 0.2
    rbf = lambda x, y: np.exp(-gamma * np.sum((x - y) ** 2))  # noqa: E731
    assert mmd2(a, b, "rbf", biased, gamma=gamma) == pytest.approx(_brute_force_mmd2(a, b, rbf, biased), rel=1e-10)
    assert mmd2(a, b, "linear", biased) == pytest.approx(_brute_force_mmd2(a, b, np.dot, biased), rel=1e-10)


def test_linear_biased_mmd2_is_the_squared_mean_difference(rng):
    a, b = rng.normal(size=(20, 8)), rng.normal(size=(30, 8)) + 1.0
    assert mmd2(a, b, kernel="linear") == pytest.approx(np.sum((a.mean(0) - b.mean(0)) ** 2), rel=1e-10)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift(rng):
    real = rng.normal(size=(40, 16))
    assert mmd(real, real) == pytest.approx(0.0, abs=1e-7)
    other = rng.normal(size=(40, 16))
    values = [mmd(real, other + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 3 * values[0]
    gamma = median_heuristic_gamma(real)
    assert mmd(real, other + 1.0) == pytest.approx(math.sqrt(max(mmd2(real, other + 1.0, gamma=gamma), 0.0)))
    with pytest.raises(ValueError, match="kernel"):
        mmd(real, other, kernel="poly")


@pytest.mark.parametrize("side, scales", [(16, 1), (32, 2), (64, 3), (128, 4), (256, 5)])
def test_ms_ssim_scale_rule(side, scales):
    assert ms_ssim_scales((side, side, side)) == scales


@pytest.mark.parametrize("side, scales", [(16, 3), (32, 4), (128, 5)])
def test_ms_ssim_scale_rule_with_the_papers_3_voxel_window(side, scales):
    assert ms_ssim_scales((side, side, side), kernel_size=3) == scales


def test_ms_ssim_scale_rule_rejects_tiny_volumes():
    with pytest.raises(ValueError, match="smaller than"):
        ms_ssim_scales((8, 8, 8))


def test_ms_ssim_diversity_counts_unordered_pairs_and_is_one_for_copies():
    generator = torch.Generator().manual_seed(0)
    copies = (torch.rand(1, 16, 16, 16, generator=generator) * 2 - 1).repeat(4, 1, 1, 1)
    same = ms_ssim_diversity(copies)
    assert same["mean"] == pytest.approx(1.0, abs=1e-5) and same["pairs"] == 6 and same["pairing"].startswith("unordered")
    noise = torch.rand(5, 16, 16, 16, generator=generator) * 2 - 1
    different = ms_ssim_diversity(noise, max_pairs=4)
    assert different["pairs"] == 4 and different["mean"] < 0.2
