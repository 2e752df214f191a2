import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from dicom_factory import ramp_hu, ramp_volume, truncate, write_localizer, write_series

from prdit.data.manifest import read_manifest
from prdit.data.preprocess import (
    PreprocessOptions,
    preprocess_lidc,
    preprocess_rad,
)
from prdit.errors import DataError
from prdit.io import load_volume

SMALL = PreprocessOptions(size=32, spacing=1.0, min_slices=8)


def _lps_points(volume):
    """LPS (x, y, z) of every voxel of a loaded volume, from the affine written into the file."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij"), axis=-1)[..., ::-1]
    ras = ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return -ras[..., 0], -ras[..., 1], ras[..., 2]


def _messy_lidc_tree(root):
    """One patient: the phantom series (shuffled names, head-first instances), a thicker second series in the
    same folder, a scout, an XML annotation and a truncated file; a second patient stored right-to-left."""
    hu, origin = ramp_volume()
    folder = root / "LIDC-IDRI-0001" / "1.2.study" / "1.2.series"
    uid, paths = write_series(folder, hu, origin=origin)
    write_series(folder, hu[::2], spacing=(5.0, 0.7, 0.7), origin=origin, prefix="THICK")
    write_localizer(folder)
    (folder / "069.xml").write_text("<LidcReadMessage/>")
    corrupt = folder / "IMG9999.dcm"
    corrupt.write_bytes(paths[0].read_bytes())
    truncate(corrupt, 0.5)
    write_series(root / "LIDC-IDRI-0002" / "s" / "s", hu, origin=origin, row_direction=-1.0, patient_id="PAT-0002")
    return uid, corrupt


def test_lidc_volumes_have_the_phantom_hu_orientation_and_geometry(tmp_path):
    uid, corrupt = _messy_lidc_tree(tmp_path / "src")
    summary = preprocess_lidc(tmp_path / "src", tmp_path / "out", SMALL, progress=False)
    assert (summary.ok, summary.skipped, summary.kept) == (2, 0, 0)

    for case in ("PAT-0001", "PAT-0002"):  # left-to-right and right-to-left storage give the same volume
        volume = load_volume(tmp_path / "out" / "volumes" / f"{case}.nii.gz")
        assert volume.array.shape == (32, 32, 32) and volume.spacing == (1.0, 1.0, 1.0)
        x, y, z = _lps_points(volume)
        # Inside the scan the output is the ramp at each voxel's world position (int16 rounding: 0.5 HU).
        inside = (np.abs(x) < 10.85) & (np.abs(y) < 10.85) & (np.abs(z) < 18.75)
        assert inside.sum() > 10_000
        assert np.abs(volume.array - ramp_hu(x, y, z))[inside].max() <= 0.5
        outside = (np.abs(x) > 11.5) | (np.abs(y) > 11.5) | (np.abs(z) > 19.5)
        assert (volume.array[outside] == -1000).all()  # padded with air, not dropped

    rows = {r.case_id: r for r in read_manifest(summary.manifest)}
    row = rows["PAT-0001"]
    assert (row.status, row.series_uid, row.output) == ("ok", uid, "volumes/PAT-0001.nii.gz")
    assert row.original_shape == [16, 32, 32] and row.original_spacing == pytest.approx([2.5, 0.7, 0.7])
    assert row.output_shape == [32, 32, 32] and row.hu_min == -1000.0
    with open(summary.report) as handle:
        report = list(csv.DictReader(handle))
    assert {"kind": "file", "item": str(corrupt)} in [{"kind": r["kind"], "item": r["item"]} for r in report]
    assert any(r["kind"] == "series" and "localizer" in r["reason"] for r in report)


def test_rerun_skips_finished_cases_and_redoes_unfinished_ones(tmp_path):
    _messy_lidc_tree(tmp_path / "src")
    out = tmp_path / "out"
    preprocess_lidc(tmp_path / "src", out, SMALL, progress=False)
    first = out / "volumes" / "PAT-0001.nii.gz"
    stamp = first.stat().st_mtime_ns
    (out / "volumes" / "PAT-0002.nii.gz").unlink()
    summary = preprocess_lidc(tmp_path / "src", out, SMALL, progress=False)
    assert (summary.processed, summary.ok, summary.kept) == (1, 1, 1)
    assert first.stat().st_mtime_ns == stamp
    assert len(read_manifest(summary.manifest)) == 2
    with pytest.raises(DataError, match="other options.*size: 32 -> 16"):
        preprocess_lidc(tmp_path / "src", out, replace(SMALL, size=16), progress=False)
    (out / "manifest.csv").unlink()
    with pytest.raises(DataError, match="manifest.csv is missing"):
        preprocess_lidc(tmp_path / "src", out, SMALL, progress=False)
    assert preprocess_lidc(tmp_path / "src", out, SMALL, overwrite=True, progress=False).ok == 2


# ----------------------------------------------------------------------------------------------------------
# The official preprocessing, written out independently (from Fredy-Zhang/PRDiT 6a75fd2: scripts/
# preproc_lidc_idri.py, scripts/preproc_rad_chestct.py and the two dataset loaders)
# ----------------------------------------------------------------------------------------------------------


def official_lidc(hu_zyx, spacing_zyx, size, pool):
    """Cubic zoom to 1 mm, centre crop, clip < -1000, clip at the 99.9% quantile, min-max; loader: pool, 2x - 1."""
    from scipy import ndimage

    volume = ndimage.zoom(hu_zyx.astype(np.float64), [s / 1.0 for s in spacing_zyx], order=3, mode="nearest")
    volume = volume[tuple(slice((n - size) // 2, (n - size) // 2 + size) for n in volume.shape)].copy()
    volume[volume < -1000] = -1000
    volume = np.clip(volume, -1000, np.quantile(volume, 0.999))
    unit = (volume - volume.min()) / (volume.max() - volume.min())
    pooled = torch.nn.AvgPool3d(pool)(torch.from_numpy(unit).float()[None, None])[0, 0] if pool > 1 else torch.from_numpy(unit).float()
    return unit, (2 * pooled - 1).numpy()


def official_rad(hu, crop, size):
    """Clip to [-1000, 1000], centre crop, trilinear zoom to size, clip at the 99.5% quantile, min-max ([0, 1])."""
    from scipy import ndimage

    volume = np.clip(hu.astype(np.float32), -1000, 1000)
    volume = volume[tuple(slice((n - crop) // 2, (n - crop) // 2 + crop) for n in volume.shape)]
    volume = ndimage.zoom(volume, [size / crop] * 3, order=1, mode="constant", cval=-1000).astype(np.float32)
    volume = np.clip(volume, -1000, np.quantile(volume, 0.995))
    return ((volume - volume.min()) / (volume.max() - volume.min())).astype(np.float32)


def _busy_ct(shape, seed=0):
    """Integer HU with air below -1000, soft tissue, bone and bright outliers, smooth enough to be CT-like."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(0, 1, shape), 1.5)
    hu = np.interp(field, [-0.3, -0.05, 0.05, 0.3], [-1024, -900, 40, 1800])
    hu[rng.random(shape) < 0.002] = 3000  # metal-like outliers the percentile must clip
    return np.rint(hu).astype(np.float32)


def test_lidc_paper_route_equals_the_official_preprocessing_and_loader(tmp_path):
    from prdit.data.dataset import VolumeDataset
    from prdit.data.intensity import IntensityMapping

    spacing = (2.0, 0.8, 0.8)
    hu, origin = _busy_ct((20, 48, 48)), (-18.8, -18.8, -19.0)
    write_series(tmp_path / "src", hu, spacing=spacing, origin=origin)
    options = replace(SMALL, normalize="paper")
    assert preprocess_lidc(tmp_path / "src", tmp_path / "out", options, progress=False).ok == 1
    path = tmp_path / "out" / "volumes" / "PAT-0001.nii.gz"
    unit, model_space = official_lidc(hu, spacing, size=32, pool=2)
    stored = load_volume(path)
    np.testing.assert_allclose(stored.array, unit, atol=2e-7)
    # The zoom maps first to first and last to last voxel: z steps are 2.0 * 19 / 39 mm, x/y 0.8 * 47 / 37 mm.
    assert stored.spacing == pytest.approx((2.0 * 19 / 39, 0.8 * 47 / 37, 0.8 * 47 / 37), rel=1e-6)
    mapping = IntensityMapping(mode="paper")
    loaded = VolumeDataset([path], mapping, image_size=16, pool=2)[0][0].numpy()
    np.testing.assert_allclose(loaded, model_space, atol=1e-6)

    pooled = replace(SMALL, normalize="paper", pool=2)  # pooling at preprocessing time: the same numbers
    preprocess_lidc(tmp_path / "src", tmp_path / "pooled", pooled, progress=False)
    again = VolumeDataset([tmp_path / "pooled" / "volumes" / "PAT-0001.nii.gz"], mapping, image_size=16)[0][0].numpy()
    np.testing.assert_allclose(again, model_space, atol=1e-6)


def test_lidc_paper_route_undoes_a_flipped_series(tmp_path):
    hu = _busy_ct((20, 48, 48), seed=1)
    write_series(tmp_path / "a", hu, spacing=(2.0, 0.8, 0.8))
    write_series(tmp_path / "b", hu, spacing=(2.0, 0.8, 0.8), row_direction=-1.0)
    options = replace(SMALL, normalize="paper")
    preprocess_lidc(tmp_path / "a", tmp_path / "out_a", options, progress=False)
    preprocess_lidc(tmp_path / "b", tmp_path / "out_b", options, progress=False)
    a, b = (load_volume(tmp_path / f"out_{k}" / "volumes" / "PAT-0001.nii.gz") for k in "ab")
    np.testing.assert_allclose(a.array, b.array, atol=1e-6)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def test_rad_paper_route_equals_the_official_preprocessing_and_loader(tmp_path):
    from prdit.data.dataset import VolumeDataset
    from prdit.data.intensity import IntensityMapping

    src = tmp_path / "rad"
    src.mkdir()
    hu = _busy_ct((40, 44, 44), seed=2) - 200.0  # values down to -1224: the clip to -1000 matters
    np.savez_compressed(src / "trn00001.npz", ct=hu)
    options = PreprocessOptions(size=16, spacing=None, normalize="paper", percentile=99.5, paper_crop=32)
    assert preprocess_rad(src, tmp_path / "out", options, progress=False).ok == 1
    path = tmp_path / "out" / "volumes" / "trn00001.nii.gz"
    expected = official_rad(hu, crop=32, size=16)
    np.testing.assert_allclose(load_volume(path).array, expected, atol=2e-7)
    unit = IntensityMapping(mode="paper", percentile=99.5, scale="unit")  # the official RAD loader trains in [0, 1]
    np.testing.assert_allclose(VolumeDataset([path], unit, image_size=16)[0][0].numpy(), expected, atol=1e-7)
    signed = IntensityMapping(mode="paper", percentile=99.5)  # the paper's text: [-1, 1]
    np.testing.assert_allclose(VolumeDataset([path], signed, image_size=16)[0][0].numpy(), 2 * expected - 1, atol=1e-6)


def _write_npz(path, shape, key="ct", value=None):
    hu, _ = ramp_volume(shape, (0.8, 0.8, 0.8))
    np.savez_compressed(path, **{key: hu if value is None else np.full(shape, value, np.float32)})
    return hu


def test_rad_crops_the_source_grid_skips_bad_files_and_reruns(tmp_path):
    src = tmp_path / "rad"
    src.mkdir()
    big = _write_npz(src / "trn00001.npz", (20, 24, 24))
    _write_npz(src / "trn00002.npz", (10, 12, 12))  # smaller than the crop: padded
    _write_npz(src / "trn00003.npz", (20, 24, 24), key="volume_hu")
    _write_npz(src / "trn00004.npz", (20, 24, 24))
    truncate(src / "trn00004.npz", 0.5)
    options = PreprocessOptions(size=16, spacing=None, percentile=99.5)
    summary = preprocess_rad(src, tmp_path / "out", options, workers=2, progress=False)
    assert (summary.ok, summary.skipped) == (2, 2)
    rows = {r.case_id: r for r in read_manifest(summary.manifest)}
    assert "no volume array 'ct'" in rows["trn00003"].reason and "volume_hu" in rows["trn00003"].reason
    assert "trn00004.npz" in rows["trn00004"].reason and "truncated" in rows["trn00004"].reason

    volume = load_volume(tmp_path / "out" / "volumes" / "trn00001.nii.gz")
    assert volume.spacing == pytest.approx((0.8, 0.8, 0.8))
    np.testing.assert_array_equal(volume.array, big[2:18, 4:20, 4:20])  # centre crop, no interpolation
    small = load_volume(tmp_path / "out" / "volumes" / "trn00002.nii.gz").array
    assert (small[:3] == -1000).all() and (small[3:13, 2:14, 2:14] != -1000).any()

    again = preprocess_rad(src, tmp_path / "out", options, progress=False)
    assert (again.kept, again.ok, again.skipped) == (2, 0, 2)  # failed cases are retried, finished ones kept


def test_rad_paper_route_and_skip_small(tmp_path):
    src = tmp_path / "rad"
    src.mkdir()
    _write_npz(src / "a.npz", (20, 24, 24))
    _write_npz(src / "b.npz", (10, 12, 12))
    options = PreprocessOptions(size=16, spacing=None, normalize="paper", percentile=99.5, paper_crop=16, skip_small=True)
    summary = preprocess_rad(src, tmp_path / "out", options, progress=False)
    assert (summary.ok, summary.skipped) == (1, 1)
    assert "smaller than the 16^3 crop" in read_manifest(summary.manifest)[1].reason
    volume = load_volume(tmp_path / "out" / "volumes" / "a.nii.gz").array
    assert volume.min() == 0.0 and volume.max() == 1.0


def test_body_crop_centres_the_patient_not_the_scan(tmp_path):
    hu, origin = ramp_volume()
    body = np.full_like(hu, -1000.0)
    body[:, 16:30, 2:14] = 40.0  # patient in the posterior-right part of the field of view
    write_series(tmp_path / "src", body, origin=origin)
    options = replace(SMALL, size=16, crop="body")
    preprocess_lidc(tmp_path / "src", tmp_path / "out", options, progress=False)
    volume = load_volume(tmp_path / "out" / "volumes" / "PAT-0001.nii.gz")
    x, y, z = _lps_points(volume)
    # Body box: x columns 2..13, y rows 16..29 -> centre (7.5, 22.5) voxels of 0.7 mm from the origin.
    center = (x[8, 8, 8] + x[8, 8, 7]) / 2, (y[8, 8, 8] + y[8, 7, 8]) / 2
    assert center == pytest.approx((origin[0] + 7.5 * 0.7, origin[1] + 22.5 * 0.7))
    assert (volume.array[2:14, 4:12, 4:12] == 40).all()


def test_a_tree_without_axial_ct_names_why(tmp_path):
    write_localizer(tmp_path / "src")
    with pytest.raises(DataError, match="no axial CT series found among 1 series.*localizer/scout image"):
        preprocess_lidc(tmp_path / "src", tmp_path / "out", SMALL, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM files found"):
        preprocess_lidc(tmp_path / "empty", tmp_path / "out", SMALL, progress=False)


def test_a_broken_largest_series_falls_back_to_the_next(tmp_path):
    hu, origin = ramp_volume()
    folder = tmp_path / "src" / "PAT-0001"
    broken_uid, _ = write_series(folder, hu, origin=origin, slices=[k for k in range(16) if k not in (7, 8)])
    thick_uid, _ = write_series(folder, hu[::2], spacing=(5.0, 0.7, 0.7), origin=origin, prefix="THICK")
    summary = preprocess_lidc(tmp_path / "src", tmp_path / "out", SMALL, progress=False)
    row = read_manifest(summary.manifest)[0]
    assert (row.status, row.series_uid, row.original_shape) == ("ok", thick_uid, [8, 32, 32])
    assert f"series {broken_uid} not usable" in row.notes and "missing slices" in row.notes


def test_rad_resampling_uses_the_file_spacing(tmp_path):
    src = tmp_path / "rad"
    src.mkdir()
    hu, origin = ramp_volume((10, 20, 20), (2.0, 1.0, 1.0))
    np.savez(src / "a.npz", ct=hu, spacing=np.array([2.0, 1.0, 1.0]))
    options = PreprocessOptions(size=8, spacing=1.0)
    preprocess_rad(src, tmp_path / "out", options, progress=False)
    volume = load_volume(tmp_path / "out" / "volumes" / "a.nii.gz")
    assert volume.spacing == (1.0, 1.0, 1.0)
    x, y, z = _lps_points(volume)
    np.testing.assert_allclose(volume.array, ramp_hu(x, y, z), atol=0.5)  # the whole cube lies inside the scan


# --- label maps (--labels DIR) ----------------------------------------------------------------------------------


def _labels_of(shape, seed=0):
    """Blocky integer labels (prdit values 0-7): every voxel differs from most of its neighbours' blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 8, size=[(n + 1) // 2 for n in shape])
    return np.kron(coarse, np.ones((2, 2, 2), dtype=np.int64))[: shape[0], : shape[1], : shape[2]].astype(np.uint8)


def test_rad_labels_follow_the_source_grid_crop_and_a_resampling(tmp_path):
    from prdit.data.label_maps import LabelOptions

    src, seg = tmp_path / "rad", tmp_path / "seg"
    src.mkdir()
    seg.mkdir()
    big = _write_npz(src / "trn00001.npz", (20, 24, 24))
    labels = _labels_of(big.shape)
    np.savez_compressed(seg / "trn00001.npz", labels=labels)  # RAD-ChestCT arrays: the scan's own axis order
    labelled = LabelOptions(str(seg))
    options = PreprocessOptions(size=16, spacing=None, percentile=99.5, labels=labelled)
    summary = preprocess_rad(src, tmp_path / "out", options, progress=False)
    assert summary.ok == 1, summary.reasons
    written = load_volume(tmp_path / "out" / "labels" / "trn00001.nii.gz")
    np.testing.assert_array_equal(written.array, labels[2:18, 4:20, 4:20])  # the volume's centre crop, exactly
    np.testing.assert_array_equal(written.affine, load_volume(tmp_path / "out" / "volumes" / "trn00001.nii.gz").affine)
    # resampled to 0.4 mm and average-pooled by 2: the pooled voxels' centres are the source voxels' centres again,
    # so the label map is the same crop (the labels are resampled onto the pooled grid, never averaged)
    pooled = preprocess_rad(src, tmp_path / "pooled", replace(options, spacing=0.4, size=32, pool=2), progress=False)
    assert pooled.ok == 1, pooled.reasons
    coarse = load_volume(tmp_path / "pooled" / "labels" / "trn00001.nii.gz")
    assert coarse.array.shape == load_volume(tmp_path / "pooled" / "volumes" / "trn00001.nii.gz").array.shape == (16, 16, 16)
    np.testing.assert_array_equal(coarse.array, labels[2:18, 4:20, 4:20])
    # at 1.2 mm every output voxel takes the label of a source voxel within half a source voxel of its centre
    resampled = preprocess_rad(src, tmp_path / "coarse", replace(options, spacing=1.2, size=12), progress=False)
    assert resampled.ok == 1, resampled.reasons
    got = load_volume(tmp_path / "coarse" / "labels" / "trn00001.nii.gz")
    centres = (np.arange(12) - 5.5) * 1.2  # mm from the scan centre, every axis
    index = [np.rint(centres / 0.8 + (n - 1) / 2).astype(int) for n in labels.shape]  # the nearest source voxel
    np.testing.assert_array_equal(got.array, labels[np.ix_(*index)])
    # a label array of another shape covers another region (no geometry to resample by): the case is refused
    np.savez_compressed(seg / "trn00001.npz", labels=labels[:10])
    refused = preprocess_rad(src, tmp_path / "refused", options, progress=False)
    assert refused.ok == 0 and "trn00001.npz: label map covers LPS" in refused.reasons[0]


def test_lidc_labels_land_on_their_world_position(tmp_path):
    import nibabel as nib

    from prdit.data.label_maps import LabelOptions

    hu, origin = ramp_volume()  # [16, 32, 32] at (2.5, 0.7, 0.7) mm
    write_series(tmp_path / "src" / "p1", hu, origin=origin, row_direction=-1.0)  # stored right-to-left
    # the label map as a NIfTI of the series (RAS affine, as dcm2niix and TotalSegmentator write): a box of heart (4)
    d, h, w = hu.shape
    z, y, x = np.meshgrid(*(np.arange(n) * s + o for n, s, o in zip(hu.shape, (2.5, 0.7, 0.7), origin[::-1])), indexing="ij")
    box = (x > -3) & (x < 6) & (y > -8) & (y < 2) & (z > -9) & (z < 9)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    (tmp_path / "seg").mkdir()
    nib.save(nib.Nifti1Image(np.transpose(box * 4, (2, 1, 0)).astype(np.uint8), affine), str(tmp_path / "seg" / "PAT-0001.nii.gz"))
    summary = preprocess_lidc(tmp_path / "src", tmp_path / "out", replace(SMALL, labels=LabelOptions(str(tmp_path / "seg"))),
                              progress=False)
    assert summary.ok == 1, summary.reasons
    labels = load_volume(tmp_path / "out" / "labels" / "PAT-0001.nii.gz")
    px, py, pz = _lps_points(labels)
    inside = (px > -3 + 0.4) & (px < 6 - 0.4) & (py > -8 + 0.4) & (py < 2 - 0.4) & (pz > -9 + 1.3) & (pz < 9 - 1.3)
    outside = (px < -3 - 0.4) | (px > 6 + 0.4) | (py < -8 - 0.4) | (py > 2 + 0.4) | (pz < -9 - 1.3) | (pz > 9 + 1.3)
    assert inside.sum() > 500 and (labels.array[inside] == 4).all() and (labels.array[outside] == 0).all()
