import gzip

import nibabel as nib
import numpy as np
import pytest

from prdit.errors import DataError
from prdit.io import (
    atomic_write,
    load_volume,
    nifti_affine,
    save_nifti,
    sha256_file,
    spacing_from_affine,
    volume_stem,
)


def asymmetric_volume(shape=(6, 7, 8)):
    volume = np.zeros(shape, np.float32)
    volume[-1, 0, -1] = 100.0  # superior, anterior, patient-left corner
    volume += np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 0.01
    return volume


def test_nifti_round_trip_keeps_values_spacing_and_affine(tmp_path):
    volume = asymmetric_volume()
    spacing = (2.5, 0.7, 0.8)
    path = save_nifti(tmp_path / "v.nii.gz", volume, spacing)
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.array, volume)
    np.testing.assert_allclose(loaded.spacing, spacing, rtol=1e-6)
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert not np.allclose(image.affine, np.eye(4))
    np.testing.assert_allclose(loaded.affine, image.affine)


def test_world_position_of_a_voxel_follows_lps_convention(tmp_path):
    volume = asymmetric_volume()
    spacing = (2.0, 1.0, 1.5)
    path = save_nifti(tmp_path / "v.nii", volume, spacing, origin=(10.0, 20.0, 30.0))
    affine = nib.load(path).affine
    # array index [z=1, y=2, x=3] -> data index (x, y, z) = (3, 2, 1); LPS = origin + index * spacing
    ras = affine @ np.array([3, 2, 1, 1.0])
    lps = np.array([-ras[0], -ras[1], ras[2]])
    np.testing.assert_allclose(lps, [10 + 3 * 1.5, 20 + 2 * 1.0, 30 + 1 * 2.0])


def test_reoriented_nifti_loads_into_the_same_array(tmp_path):
    volume = asymmetric_volume()
    path = save_nifti(tmp_path / "lps.nii.gz", volume, (1.0, 2.0, 3.0))
    ras = nib.as_closest_canonical(nib.load(path))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, tmp_path / "ras.nii.gz")
    loaded = load_volume(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(loaded.array, volume)
    np.testing.assert_allclose(loaded.spacing, (1.0, 2.0, 3.0))


def test_int16_storage_rounds_and_clips(tmp_path):
    volume = np.array([[[-5000.4, 12.6], [40000.0, -0.4]]] * 2, np.float32)
    loaded = load_volume(save_nifti(tmp_path / "v.nii.gz", volume, dtype=np.int16))
    np.testing.assert_array_equal(loaded.array[0], [[-5000, 13], [32767, 0]])


def test_same_volume_gives_identical_bytes(tmp_path):
    volume = asymmetric_volume()
    a = save_nifti(tmp_path / "a.nii.gz", volume)
    b = save_nifti(tmp_path / "b.nii.gz", volume)
    assert sha256_file(a) == sha256_file(b)


def test_existing_nifti_is_not_overwritten_without_permission(tmp_path):
    path = save_nifti(tmp_path / "v.nii.gz", asymmetric_volume())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_nifti(path, asymmetric_volume() * 2)
    assert path.read_bytes() == before
    save_nifti(path, asymmetric_volume() * 2, overwrite=True)
    assert path.read_bytes() != before


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write(b"half written")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_npy_and_npz_volumes(tmp_path):
    volume = asymmetric_volume()
    np.save(tmp_path / "a.npy", volume)
    np.savez(tmp_path / "b.npz", ct=volume, spacing=np.array([2.0, 1.0, 1.0]))
    np.savez(tmp_path / "c.npz", other=volume)
    np.savez(tmp_path / "d.npz", first=volume, second=volume)
    np.testing.assert_array_equal(load_volume(tmp_path / "a.npy").array, volume)
    loaded = load_volume(tmp_path / "b.npz")
    assert loaded.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(load_volume(tmp_path / "c.npz").array, volume)
    with pytest.raises(DataError, match=r"d\.npz.*first"):
        load_volume(tmp_path / "d.npz")
    np.testing.assert_array_equal(load_volume(tmp_path / "d.npz", npz_key="second").array, volume)


@pytest.mark.parametrize(
    "writer, message",
    [
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros((4, 4))), "3D volume"),
        (lambda p: np.save(p.with_suffix(".npy"), np.full((3, 3, 3), np.nan)), "NaN"),
        (lambda p: p.with_suffix(".npy").write_bytes(b"\x93NUMPY garbage"), "truncated or corrupt"),
    ],
)
def test_bad_volumes_are_reported_by_name(tmp_path, writer, message):
    path = tmp_path / "bad.npy"
    writer(path)
    with pytest.raises(DataError, match=message) as error:
        load_volume(path)
    assert "bad.npy" in str(error.value)


def test_truncated_nifti_is_reported_by_name(tmp_path):
    path = save_nifti(tmp_path / "v.nii.gz", asymmetric_volume((16, 16, 16)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"v\.nii\.gz"):
        load_volume(path)
    plain = tmp_path / "w.nii.gz"
    plain.write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(DataError, match=r"w\.nii\.gz"):
        load_volume(plain)


def test_missing_and_wrong_suffix(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_volume(tmp_path / "nothing.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a volume"):
        load_volume(tmp_path / "notes.txt")


def test_geometry_helpers():
    affine = nifti_affine((2.5, 0.7, 0.8), (0.0, 0.0, 0.0))
    assert spacing_from_affine(affine) == (2.5, 0.7, 0.8)
    assert volume_stem("dir/case_001.nii.gz") == "case_001"
