import os

import numpy as np
import pytest

from prdit.data.intensity import IntensityMapping
from prdit.errors import DataError
from prdit.evaluation.data import (
    VolumeSet,
    cache_key,
    check_same_shape,
    load_cached_features,
    load_volume_set,
    save_cached_features,
)
from prdit.io import save_nifti


@pytest.fixture
def hu_volumes(rng):
    return [rng.uniform(-1000, 1000, size=(8, 8, 8)).astype(np.float32) for _ in range(3)]


def test_folder_of_nifti_npy_and_npz_loads_in_hu(tmp_path, hu_volumes):
    save_nifti(tmp_path / "a.nii.gz", hu_volumes[0])
    np.save(tmp_path / "b.npy", hu_volumes[1])
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "c.npz", ct=hu_volumes[2])
    volume_set = load_volume_set(tmp_path)
    assert len(volume_set) == 3 and volume_set.shape == (8, 8, 8)
    np.testing.assert_allclose(volume_set.volumes, np.stack(hu_volumes), atol=1e-3)
    assert [p.name for p in volume_set.files] == ["a.nii.gz", "b.npy", "c.npz"]
    assert len(load_volume_set(tmp_path, limit=2)) == 2


def test_list_file_and_single_stack_file(tmp_path, hu_volumes):
    for index, volume in enumerate(hu_volumes):
        np.save(tmp_path / f"v{index}.npy", volume)
    (tmp_path / "list.txt").write_text("v2.npy\n# a comment\nv0.npy\n")
    listed = load_volume_set(tmp_path / "list.txt")
    np.testing.assert_array_equal(listed.volumes, np.stack([hu_volumes[2], hu_volumes[0]]))
    np.save(tmp_path / "stack.npy", np.stack(hu_volumes)[:, None])  # [N, 1, D, H, W]
    stacked = load_volume_set(tmp_path / "stack.npy")
    np.testing.assert_array_equal(stacked.volumes, np.stack(hu_volumes))


def test_model_space_files_come_back_in_hu(tmp_path):
    np.save(tmp_path / "x.npy", np.stack([np.full((4, 4, 4), -1.0), np.full((4, 4, 4), 0.5)]).astype(np.float32))
    volume_set = load_volume_set(tmp_path / "x.npy", space="model", mapping=IntensityMapping(window=(-1000.0, 1000.0)))
    assert volume_set.volumes[0].max() == pytest.approx(-1000.0) and volume_set.volumes[1].min() == pytest.approx(500.0)
    np.testing.assert_allclose(volume_set.model_space()[1], 0.5)
    np.save(tmp_path / "hu.npy", np.full((2, 4, 4, 4), 300.0, dtype=np.float32))
    with pytest.raises(DataError, match="--space hu"):
        load_volume_set(tmp_path / "hu.npy", space="model", mapping=IntensityMapping())


def test_bad_paths_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_volume_set(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        load_volume_set(tmp_path / "empty")
    with pytest.raises(DataError, match="empty"):
        load_volume_set([])


def test_mismatched_shapes_are_errors_unless_resampling_is_asked_for(tmp_path, rng):
    volumes = [rng.normal(size=(8, 8, 8)), rng.normal(size=(8, 8, 6))]
    with pytest.raises(DataError, match="--resize trilinear"):
        load_volume_set(volumes, name="fake")
    resized = load_volume_set(volumes, size=8, resize="trilinear")
    assert resized.shape == (8, 8, 8) and resized.resized_from == [(8, 8, 6)]
    np.testing.assert_array_equal(resized.volumes[0], volumes[0].astype(np.float32))  # already S^3: untouched
    constant = load_volume_set([np.full((4, 4, 4), 7.0)], size=8, resize="trilinear")
    np.testing.assert_allclose(constant.volumes, 7.0)  # trilinear resampling preserves a constant
    with pytest.raises(DataError, match="generated ones"):
        check_same_shape(load_volume_set(volumes[:1]), load_volume_set([np.zeros((6, 6, 6))]))


def test_fingerprint_follows_files_and_in_memory_sets_have_none(tmp_path, hu_volumes):
    np.save(tmp_path / "a.npy", hu_volumes[0])
    first = load_volume_set(tmp_path).fingerprint()
    assert first == load_volume_set(tmp_path).fingerprint()
    os.utime(tmp_path / "a.npy", ns=(0, 10**9))
    assert load_volume_set(tmp_path).fingerprint() != first
    assert load_volume_set(hu_volumes).fingerprint() is None


def test_feature_cache_round_trip_keys_and_corruption(tmp_path, hu_volumes, rng):
    np.save(tmp_path / "a.npy", hu_volumes[0])
    volume_set = load_volume_set(tmp_path)
    features = rng.normal(size=(1, 5))
    key = cache_key(volume_set, {"weights": "w1"})
    assert key != cache_key(volume_set, {"weights": "w2"})
    assert cache_key(VolumeSet(np.zeros((1, 2, 2, 2)), "mem", [], []), {}) is None
    cache = tmp_path / "cache"
    assert load_cached_features(cache, key) is None
    save_cached_features(cache, key, features, {"weights": "w1"})
    np.testing.assert_allclose(load_cached_features(cache, key), features, rtol=1e-6)
    (cache / f"features-{key}.npz").write_bytes(b"truncated")
    assert load_cached_features(cache, key) is None
