import numpy as np

from prdit.data.volume_ops import average_pool, body_center, crop_or_pad, filled_body, largest_component


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


def test_body_center_ignores_the_table():
    hu = np.full((20, 40, 40), -1000.0, np.float32)
    hu[2:18, 5:25, 10:30] = 40.0  # body, off centre
    hu[:, 35:37, :] = 300.0  # table, separate and smaller
    np.testing.assert_allclose(body_center(hu), [9.5, 14.5, 19.5])


def test_largest_component_keeps_the_biggest_region_only():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[6:9, 6:9, 5:9] = True  # 36 voxels: the patient
    mask[0, 9, 9] = True
    body = largest_component(mask)
    assert body.sum() == 36 and body[7, 7, 6] and not body[2, 2, 2] and not body[0, 9, 9]
    assert not largest_component(np.zeros((4, 4, 4), dtype=bool)).any()


def test_filled_body_fills_the_lungs_and_drops_the_table():
    hu = np.full((6, 20, 20), -1000.0, dtype=np.float32)
    hu[:, 2:14, 2:18] = 40.0  # the body
    hu[:, 5:11, 5:9] = -850.0  # a lung: enclosed in every axial slice
    hu[:, 17:19, :] = 100.0  # the table, a separate region
    body = filled_body(hu)
    assert body[:, 2:14, 2:18].all() and body.sum() == 6 * 12 * 16 and not body[:, 17:19].any()
