import numpy as np
import pytest

from prdit.data.volume_ops import average_pool, body_center, crop_or_pad, paper_normalize
from prdit.errors import DataError


def test_average_pool_matches_block_means():
    volume = np.arange(4 * 4 * 6, dtype=np.float32).reshape(4, 4, 6)
    pooled = average_pool(volume, 2)
    assert pooled.shape == (2, 2, 3)
    assert pooled[1, 0, 2] == volume[2:4, 0:2, 4:6].mean()
    assert average_pool(volume, 1) is volume


def test_crop_or_pad_centres_and_fills_with_air():
    volume = np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)
    cube = crop_or_pad(volume, 8)
    assert cube.shape == (8, 8, 8)
    np.testing.assert_array_equal(cube[1:7, :, :], volume[:, :, 1:9])  # z padded 1 + 1, x cropped 1 + 1
    assert (cube[0] == -1000).all() and (cube[7] == -1000).all()
    np.testing.assert_array_equal(crop_or_pad(volume, 4, start=(2, 3, 4)), volume[2:6, 3:7, 4:8])
    assert (crop_or_pad(volume, 4, start=(-4, 0, 0)) == -1000).all()


def test_paper_normalize_clips_at_the_percentile_and_scales_to_unit_range():
    hu = np.linspace(-2000, 2000, 1001, dtype=np.float32).reshape(1, 7, 143)
    out = paper_normalize(hu, percentile=90.0)
    high = np.percentile(np.clip(hu, -1000, None), 90.0)
    expected = (np.clip(hu, -1000, high) + 1000) / (high + 1000)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    capped = paper_normalize(hu, percentile=100.0, ceiling=1000.0)
    assert capped.max() == 1.0 and np.count_nonzero(capped == 1.0) == np.count_nonzero(hu >= 1000)
    with pytest.raises(DataError, match="constant"):
        paper_normalize(np.full((2, 2, 2), -1000.0), 99.9)


def test_body_center_ignores_the_table():
    hu = np.full((20, 40, 40), -1000.0, np.float32)
    hu[2:18, 5:25, 10:30] = 40.0  # body, off centre
    hu[:, 35:37, :] = 300.0  # table, separate and smaller
    np.testing.assert_allclose(body_center(hu), [9.5, 14.5, 19.5])
