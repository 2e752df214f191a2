"""Anatomy metrics: masks and features of a synthetic chest with known geometry, real phantoms, comparisons."""

import numpy as np
import pytest

from prdit.data.phantom import generate_phantom
from prdit.evaluation.anatomy import FEATURES, body_and_lung_masks, compare_features, set_features, volume_features


def box_chest() -> np.ndarray:
    """A 16 x 24 x 24 chest: a soft-tissue box (40 HU) in air, two equal lung cavities (-850 HU), a table below."""
    volume = np.full((16, 24, 24), -1000.0, dtype=np.float32)
    volume[:, 4:16, 2:22] = 40.0  # body: 16 slices x 12 rows x 20 columns
    volume[2:14, 6:14, 4:10] = -850.0  # right lung
    volume[2:14, 6:14, 14:20] = -850.0  # left lung, mirror image
    volume[:, 20:22, :] = 500.0  # the scanner table: dense, but not connected to the body
    return volume


def test_masks_and_features_of_a_chest_with_known_geometry():
    volume = box_chest()
    body, lungs = body_and_lung_masks(volume)
    assert body.sum() == 16 * 12 * 20 and not body[:, 20:22].any()  # filled body, table left out
    assert lungs.sum() == 2 * 12 * 8 * 6 and (volume[lungs] == -850).all()
    features = volume_features(volume)
    assert set(features) == set(FEATURES)
    assert features["body_fraction"] == pytest.approx(16 * 12 * 20 / volume.size)
    assert features["lung_fraction_of_body"] == pytest.approx(2 * 12 * 8 * 6 / (16 * 12 * 20))
    assert features["lung_components"] == 2 and features["lung_balance"] == 1.0
    assert features["lung_extent_z"] == pytest.approx(12 / 16)
    assert features["body_width"] == pytest.approx(20 / 24) and features["body_depth"] == pytest.approx(12 / 24)
    assert features["lung_mask_mean_hu"] == -850.0 and features["lung_mask_std_hu"] == 0.0
    assert features["soft_tissue_mean_hu"] == 40.0 and np.isnan(features["fat_mean_hu"])
    # the table (500 HU) is bone-dense: 2 of 24 rows of every slice, the same in each band
    assert features["middle_bone_fraction"] == pytest.approx(2 / 24)


def test_an_empty_field_of_view_has_no_body_and_no_lungs():
    features = volume_features(np.full((8, 8, 8), -1000.0, dtype=np.float32))
    assert features["body_fraction"] == 0 and features["lung_components"] == 0 and np.isnan(features["lung_mask_mean_hu"])


def test_phantom_anatomy_is_a_chest():
    features = volume_features(generate_phantom(32, seed=3)[0])
    assert 1 <= features["lung_components"] <= 2 and features["lung_balance"] > 0.7
    assert 0.15 < features["lung_fraction_of_body"] < 0.35 and -900 < features["lung_mask_mean_hu"] < -600
    # lungs fill the middle of the chest more than its inferior end (abdomen, diaphragm)
    assert features["middle_lung_fraction"] > features["inferior_lung_fraction"]


def test_comparison_reports_standardised_differences_and_a_zero_score_for_equal_sets():
    real = {name: np.array([0.0, 2.0]) for name in FEATURES}  # mean 1, std 1
    fake = {name: np.array([3.0, 3.0]) for name in FEATURES}
    result = compare_features(real, fake)
    assert result["features"]["body_fraction"]["standardised_difference"] == pytest.approx(2.0)
    assert result["score"] == pytest.approx(2.0)
    assert compare_features(real, real)["score"] == 0.0
    missing = dict(fake, lung_mask_mean_hu=np.array([np.nan, 3.0]))
    assert compare_features(real, missing)["features"]["lung_mask_mean_hu"]["fake_missing"] == 1


def test_a_blurred_set_is_farther_from_the_phantoms_than_other_phantoms():
    from scipy.ndimage import gaussian_filter

    real = np.stack([generate_phantom(32, seed=s)[0] for s in range(4)])
    other = np.stack([generate_phantom(32, seed=s)[0] for s in range(4, 8)])
    blurred = np.stack([gaussian_filter(v, 1.5) for v in other])
    reference = set_features(real)
    assert compare_features(reference, set_features(blurred))["score"] > 2 * compare_features(reference, set_features(other))["score"]
