"""Memorisation report: exact nearest neighbours, copies of the training set are flagged, fresh draws are not."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from prdit.evaluation.memorisation import memorisation_report, nearest_neighbours

WINDOW = (-1000.0, 1000.0)  # the generating model's HU range


def draws(rng, n: int) -> np.ndarray:
    """Smooth random 8^3 volumes in HU: independent draws from one distribution."""
    return np.stack([gaussian_filter(rng.normal(0, 400, (8, 8, 8)), 1.0) * 3 for _ in range(n)]).astype(np.float32)


def test_nearest_neighbours_match_a_brute_force_search(rng):
    queries, references = draws(rng, 5), draws(rng, 7)
    references[3, 0, 0, 0] = 5000.0  # clipped to 1000 HU before distances are taken
    distances, index = nearest_neighbours(queries, references, WINDOW)
    clipped = np.clip(references.astype(np.float64), -1000, 1000)
    brute = np.sqrt(((np.clip(queries, -1000, 1000)[:, None] - clipped[None]) ** 2).mean(axis=(2, 3, 4)))
    np.testing.assert_array_equal(index, brute.argmin(1))
    np.testing.assert_allclose(distances, brute.min(1), rtol=1e-9)


def test_copies_of_the_training_set_are_flagged_and_named(rng):
    train, heldout = draws(rng, 40), draws(rng, 16)
    copies = train[[3, 7, 11, 19]] + rng.normal(0, 1, (4, 8, 8, 8))
    report = memorisation_report(copies, train, heldout, WINDOW, train_names=[f"t{i}" for i in range(40)])
    assert report["samples"]["nn_ratio"] < 0.05 and report["copies"]["fraction_below"] == 1.0
    assert {entry["train"] for entry in report["closest"][:4]} == {"t3", "t7", "t11", "t19"}


def test_fresh_draws_look_like_unseen_real_data(rng):
    train, heldout, fresh = draws(rng, 60), draws(rng, 20), draws(rng, 20)
    report = memorisation_report(fresh, train, heldout, WINDOW, seed=1)
    for part in ("samples", "floor"):
        assert 0.85 < report[part]["nn_ratio"] < 1.15 and 0.85 < report[part]["equal_size_ratio"] < 1.15
    assert report["copies"]["fraction_below"] <= 0.2 and report["samples"]["p_closer_to_train"] > 0.01


def test_the_held_out_set_must_be_smaller_than_the_training_set(rng):
    with pytest.raises(ValueError, match="held-out"):
        memorisation_report(draws(rng, 4), draws(rng, 4), draws(rng, 6), WINDOW)
