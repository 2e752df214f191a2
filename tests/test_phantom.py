"""The procedural chest-CT phantom: determinism, anatomy, HU ranges, orientation and the dataset writer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from prdit.data.phantom import (
    DENSE_CORTICAL_HU,
    FIELD_OF_VIEW_MM,
    TISSUE_HU_RANGES,
    TISSUE_LABELS,
    generate_phantom,
    sample_tissue_hu,
    write_phantom_dataset,
)
from prdit.errors import PrditError
from prdit.io import centered_origin, load_volume, nifti_affine

L = TISSUE_LABELS
BONE = [L["cancellous"], L["cortical"]]


def litres(mask: np.ndarray, spacing) -> float:
    return float(mask.sum() * np.prod(spacing) / 1e6)


def centroid_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Centroid (z, y, x) in mm, origin at the volume centre, of a [D, H, W] mask."""
    index = np.array(ndimage.center_of_mass(mask))
    return (index - (np.array(mask.shape) - 1) / 2) * np.array(spacing)


@pytest.fixture(scope="module")
def phantom64():
    return generate_phantom(64, 3, return_labels=True)


def test_same_seed_gives_identical_bytes():
    first, spacing_a, labels_a = generate_phantom(32, 11, return_labels=True)
    second, spacing_b, labels_b = generate_phantom(32, 11, return_labels=True)
    assert first.dtype == np.float32 and first.shape == (32, 32, 32)
    assert first.tobytes() == second.tobytes()
    assert labels_a.dtype == np.uint8 and labels_a.tobytes() == labels_b.tobytes()
    assert spacing_a == spacing_b == (FIELD_OF_VIEW_MM / 32,) * 3


def test_different_seeds_give_different_anatomy():
    lungs, bodies = [], []
    for seed in range(4):
        _, spacing, labels = generate_phantom(32, seed, return_labels=True, noise=False)
        lungs.append(litres(labels == L["lung"], spacing))
        bodies.append(litres(~np.isin(labels, [L["air"], L["table_shell"], L["table_foam"]]), spacing))
    assert len(set(np.round(lungs, 3))) == 4 and np.ptp(lungs) > 0.3  # litres
    assert len(set(np.round(bodies, 3))) == 4 and np.ptp(bodies) > 1.0


def test_noise_free_tissue_values_lie_in_their_hu_ranges(phantom64):
    _, spacing, labels = phantom64
    volume, _ = generate_phantom(64, 3, noise=False)
    # The point-spread blur (sigma 0.5 voxel) mixes neighbours: away from boundaries a voxel keeps its tissue's
    # value up to the < 1e-3 weight of voxels two steps away.
    interior = ndimage.maximum_filter(labels, size=3) == ndimage.minimum_filter(labels, size=3)
    checked = set()
    for name, label in L.items():
        values = volume[interior & (labels == label)]
        if values.size:
            low, high = TISSUE_HU_RANGES[name]
            assert low - 2.0 <= values.min() and values.max() <= high + 2.0, name
            checked.add(name)
    assert {"air", "fat", "soft_tissue", "lung", "heart", "liver", "cancellous"} <= checked


@pytest.mark.parametrize("seed", range(20))
def test_per_seed_tissue_values_lie_in_their_ranges(seed):
    lut = sample_tissue_hu(np.random.default_rng(seed))
    for name, label in L.items():
        low, high = TISSUE_HU_RANGES[name]
        assert low <= lut[label] <= high, name
    assert lut[L["cortical"]] > lut[L["cancellous"]] > lut[L["soft_tissue"]] > lut[L["fat"]] > lut[L["lung"]] > lut[L["air"]]


def test_dense_bone_is_opt_in_and_changes_only_cortical_bone():
    plain, spacing, labels = generate_phantom(32, 5, return_labels=True)
    dense, _, same_labels = generate_phantom(32, 5, return_labels=True, dense_bone=True)
    assert np.array_equal(labels, same_labels) and plain.max() < 1000.0  # the default stays inside [-1000, 1000]
    cube = np.ones((3, 3, 3), dtype=bool)  # the point-spread blur reaches 2 voxels along every axis
    far_from_bone = ~ndimage.binary_dilation(labels == L["cortical"], structure=cube, iterations=3)
    np.testing.assert_allclose(plain[far_from_bone], dense[far_from_bone], atol=1e-3)
    assert (dense > 1000.0).mean() > 0.002 and dense.max() > 1200.0
    lut = sample_tissue_hu(np.random.default_rng(5), dense_bone=True)
    assert DENSE_CORTICAL_HU[0] <= lut[L["cortical"]] <= DENSE_CORTICAL_HU[1]


@pytest.mark.parametrize("size", [32, 64])
def test_lung_and_bone_fractions_are_plausible(size):
    for seed in (0, 1):
        _, spacing, labels = generate_phantom(size, seed, return_labels=True)
        assert 3.0 <= litres(labels == L["lung"], spacing) <= 7.0  # adult lungs at inspiration
        assert 0.06 <= (labels == L["lung"]).mean() <= 0.16
        assert 0.4 <= litres(np.isin(labels, BONE), spacing) <= 1.5
        assert 0.01 <= np.isin(labels, BONE).mean() <= 0.035


def test_fractions_at_128_match_64():
    _, spacing, labels = generate_phantom(128, 0, return_labels=True)
    _, spacing64, labels64 = generate_phantom(64, 0, return_labels=True)
    lung, lung64 = litres(labels == L["lung"], spacing), litres(labels64 == L["lung"], spacing64)
    assert 3.0 <= lung <= 7.0 and abs(lung - lung64) / lung < 0.1  # the same patient at both resolutions
    assert 0.01 <= np.isin(labels, BONE).mean() <= 0.035


def test_orientation_follows_lps(phantom64):
    _, spacing, labels = phantom64
    lung = labels == L["lung"]
    x_mm = centroid_mm(np.ones_like(lung), spacing)[2]
    assert abs(x_mm) < 1e-6
    right, left = lung.copy(), lung.copy()
    right[:, :, 32:] = False  # low x index = patient right
    left[:, :, :32] = False
    assert 0.35 < right.sum() / lung.sum() < 0.65  # two lungs, one each side of the midline
    body = ~np.isin(labels, [L["air"], L["table_shell"], L["table_foam"]])
    body_center = centroid_mm(body, spacing)
    heart = centroid_mm(labels == L["heart"], spacing)
    assert heart[2] > 5.0, "the heart lies to the patient's left (high x)"
    assert heart[1] < body_center[1] - 10.0, "the heart lies anterior (low y)"
    spine = np.isin(labels, BONE)
    spine[:, :, np.abs(np.arange(64) - 31.5) * spacing[2] > 30.0] = False  # midline bone: the vertebrae
    assert centroid_mm(spine, spacing)[1] > body_center[1] + 20.0, "the spine lies posterior (high y)"
    assert centroid_mm(np.isin(labels, [L["table_shell"], L["table_foam"]]), spacing)[1] > body_center[1] + 100.0
    lung_center = centroid_mm(lung, spacing)
    assert centroid_mm(labels == L["liver"], spacing)[0] < lung_center[0] - 50.0, "the liver lies below (low z)"
    assert centroid_mm(labels == L["liver"], spacing)[2] < 0.0, "the liver lies on the patient's right"
    top = np.flatnonzero(labels[:, :, 32 - 2 : 32 + 2] == L["airway"])
    assert top.size and np.unravel_index(top.max(), (64, 64, 4))[0] == 63, "the trachea leaves through the top (superior)"


def test_default_spacing_keeps_the_physical_chest_extent():
    extents = []
    for size in (32, 64):
        _, spacing, labels = generate_phantom(size, 5, return_labels=True, nodules=False)
        assert spacing == (FIELD_OF_VIEW_MM / size,) * 3
        body = ~np.isin(labels[size // 2], [L["air"], L["table_shell"], L["table_foam"]])
        columns = np.flatnonzero(body.any(axis=0))
        extents.append((columns[-1] - columns[0] + 1) * spacing[2])
    assert 250.0 < extents[1] < FIELD_OF_VIEW_MM and abs(extents[0] - extents[1]) <= FIELD_OF_VIEW_MM / 32 * 2


def test_explicit_spacing_crops_the_same_patient():
    spacing_mm = FIELD_OF_VIEW_MM / 64
    _, spacing, small = generate_phantom(32, 5, spacing_mm=spacing_mm, nodules=False, return_labels=True)
    _, _, full = generate_phantom(64, 5, nodules=False, return_labels=True)
    assert spacing == (spacing_mm,) * 3
    crop = full[16:48, 16:48, 16:48]  # the same voxel centres in millimetres
    trees = np.isin(crop, [L["airway"], L["vessel"]]) | np.isin(small, [L["airway"], L["vessel"]])
    assert (crop == small)[~trees].mean() > 0.995  # only the resolution-dependent branch tips may differ


def test_nodules_vary_and_can_be_turned_off():
    counts = [int((generate_phantom(32, seed, return_labels=True)[2] == L["nodule"]).sum()) for seed in range(8)]
    assert min(counts) == 0 and max(counts) > 0  # some patients have nodules, some have none
    seed = int(np.argmax(counts))
    assert not (generate_phantom(32, seed, nodules=False, return_labels=True)[2] == L["nodule"]).any()


def test_nodule_sizes_stay_within_30_mm():
    _, spacing, labels = generate_phantom(64, 4, return_labels=True)
    components, count = ndimage.label(labels == L["nodule"])
    assert count > 0
    sizes = ndimage.sum_labels(np.ones_like(components), components, index=range(1, count + 1))
    diameters = 2 * (3 * sizes * np.prod(spacing) / (4 * np.pi)) ** (1 / 3)
    assert diameters.max() <= 36.0  # 30 mm plus lobulation and voxelisation


def test_noise_is_correlated_with_the_requested_strength():
    noisy, _ = generate_phantom(32, 2)
    clean, _ = generate_phantom(32, 2, noise=False)
    noise = (noisy - clean)[clean > -900]  # away from the -1024 clip
    assert 8.0 < noise.std() < 22.0
    field = noisy - clean
    lag1 = np.corrcoef(field[:, :, 1:].ravel(), field[:, :, :-1].ravel())[0, 1]
    assert 0.4 < lag1 < 0.9  # filtered, not white noise


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=31), dict(size=257), dict(size=64.0), dict(size=64, spacing_mm=0.0), dict(size=64, spacing_mm=-1.0),
     dict(size=64, spacing_mm=float("nan")), dict(size=64, seed=-1)],
)
def test_invalid_arguments_are_user_errors(kwargs):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(PrditError):
        generate_phantom(kwargs.pop("size"), **kwargs)


def test_write_phantom_dataset_writes_lists_and_skips_on_rerun(tmp_path):
    summary = write_phantom_dataset(tmp_path, num=3, size=32, seed=7, progress=False)
    names = [f"phantom_{s:05d}.nii.gz" for s in (7, 8, 9)]
    assert summary["written"] == 3 and summary["skipped"] == 0
    assert [p.name for p in summary["train"]] == names[:2] and [p.name for p in summary["val"]] == names[2:]
    assert (tmp_path / "train.txt").read_text().split() == names[:2]
    assert (tmp_path / "val.txt").read_text().split() == names[2:]
    assert not list(tmp_path.glob(".tmp-*"))
    stamps = [(tmp_path / n).stat().st_mtime_ns for n in names]

    again = write_phantom_dataset(tmp_path, num=3, size=32, seed=7, progress=False)
    assert again["written"] == 0 and again["skipped"] == 3
    assert [(tmp_path / n).stat().st_mtime_ns for n in names] == stamps
    assert write_phantom_dataset(tmp_path, num=3, size=32, seed=7, progress=False, overwrite=True)["written"] == 3

    loaded = load_volume(tmp_path / names[0])
    expected, spacing = generate_phantom(32, 7)
    assert loaded.spacing == pytest.approx(spacing)
    assert np.allclose(loaded.affine, nifti_affine(spacing, centered_origin(expected.shape, spacing)))
    assert not np.allclose(loaded.affine, np.eye(4))
    assert np.array_equal(loaded.array, np.clip(np.rint(expected), -32768, 32767))


def test_parallel_workers_write_the_same_volumes(tmp_path):
    write_phantom_dataset(tmp_path / "serial", num=2, size=32, seed=3, progress=False)
    write_phantom_dataset(tmp_path / "pool", num=2, size=32, seed=3, workers=2, progress=False)
    for name in ("phantom_00003.nii.gz", "phantom_00004.nii.gz"):
        assert np.array_equal(load_volume(tmp_path / "serial" / name).array, load_volume(tmp_path / "pool" / name).array)


def test_write_phantom_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(PrditError):
        write_phantom_dataset(tmp_path, num=0, size=32, progress=False)
    with pytest.raises(PrditError):
        write_phantom_dataset(tmp_path, num=2, size=16, progress=False)
    assert not list(tmp_path.iterdir())
