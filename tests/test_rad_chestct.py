import numpy as np
import pytest

from prdit.data.rad_chestct import RAD_SPACING_MM, read_rad_volume
from prdit.errors import DataError


def test_reads_the_ct_key_with_the_documented_spacing(tmp_path):
    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    np.savez_compressed(tmp_path / "a.npz", ct=hu)
    array, spacing = read_rad_volume(tmp_path / "a.npz")
    assert array.dtype == np.float32 and array.shape == (4, 5, 6)
    np.testing.assert_array_equal(array, hu)  # no axis reordering: the file is [z, y, x]
    assert spacing == (RAD_SPACING_MM,) * 3 == (0.8, 0.8, 0.8)
    assert read_rad_volume(tmp_path / "a.npz", spacing_mm=0.7)[1] == (0.7, 0.7, 0.7)


def test_a_spacing_entry_in_the_file_wins_over_the_default(tmp_path):
    np.savez(tmp_path / "b.npz", ct=np.zeros((4, 4, 4), np.float32), spacing=np.array([2.0, 0.6, 0.6]))
    assert read_rad_volume(tmp_path / "b.npz")[1] == (2.0, 0.6, 0.6)


def test_other_keys_need_the_key_named(tmp_path):
    np.savez(tmp_path / "c.npz", volume_hu=np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"c\.npz: no volume array 'ct'.*volume_hu"):
        read_rad_volume(tmp_path / "c.npz")
    assert read_rad_volume(tmp_path / "c.npz", key="volume_hu")[0].shape == (4, 4, 4)


def test_truncated_and_wrong_files_are_clear_errors(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", ct=np.random.default_rng(0).normal(size=(8, 8, 8)))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"d\.npz: cannot read the file.*truncated"):
        read_rad_volume(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", ct=np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match=r"e\.npz is 2D \(8x8\); a 3D volume is needed"):
        read_rad_volume(tmp_path / "e.npz")
    with pytest.raises(DataError, match=r"\.npz files"):
        read_rad_volume(tmp_path / "f.nii.gz")
