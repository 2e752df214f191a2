"""``prdit data import`` on a messy collection: mixed formats, spacings 0.6-5 mm, LPS/RAS/oblique geometry,
int16/uint16/float, a stored rescale, a truncated file, a duplicate, non-CT ranges and a near-empty scan.

Every scan samples one analytic body in LPS millimetres: a linear HU ramp inside an ellipsoid, air outside. Linear
resampling reproduces a linear function exactly, so away from the body's surface every output voxel must equal the
truth at its own world position (read from the output's affine) to within the int16 rounding of source and output.
A wrong axis order, flip, spacing or origin anywhere would show as errors of tens to hundreds of HU.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from prdit.data.collection import ImportOptions, hu_offset_for, import_collection, orientation_code
from prdit.errors import DataError
from tests.collection_factory import GOOD, REFUSED, level, rotation_z, sitk_scan, truth_hu, write_messy_collection

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, SPACING = 40, 3.5  # output cube: 140 mm


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """The messy source folder and one import of it (two workers)."""
    src = write_messy_collection(tmp_path_factory.mktemp("hospital"))
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*")}
    out = tmp_path_factory.mktemp("imported")
    summary, split = import_collection(src, out, ImportOptions(size=SIZE, spacing=SPACING, hu_offset=-1024.0),
                                       workers=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*")} == before  # nothing in the source changed
    with open(out / "manifest.csv", newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    return src, out, summary, split, rows


def test_every_good_scan_is_canonical_hu_equal_to_the_truth_voxel_by_voxel(collection):
    _, out, _, _, rows = collection
    for case_id in GOOD:
        assert rows[case_id]["status"] == "ok", rows[case_id]["reason"]
        image = nib.load(out / rows[case_id]["output"])
        assert image.shape == (SIZE,) * 3 and image.get_data_dtype() == np.int16
        np.testing.assert_allclose(image.affine[:3, :3], np.diag([-SPACING, -SPACING, SPACING]))  # LPS, [z, y, x] arrays
        data = np.asarray(image.dataobj, dtype=np.float64)  # (x, y, z) axes of the LPS-ordered array
        i, j, k = np.meshgrid(*(np.arange(SIZE),) * 3, indexing="ij")
        ras = np.stack([i, j, k, np.ones_like(i)], axis=-1) @ image.affine.T
        lps = ras[..., :3] * np.array([-1, -1, 1])
        source_spacing = max(float(v) for v in rows[case_id]["original_spacing"].split())
        inside = level(lps, margin=source_spacing * 1.8) < 1.0
        outside = level(lps, margin=-source_spacing * 1.8) > 1.0
        assert inside.sum() > 2000, case_id
        error = np.abs(data - truth_hu(lps))
        assert error[inside].max() <= 1.5, (case_id, error[inside].max())
        assert (data[outside] == -1000).all(), case_id


def test_geometry_and_actions_are_recorded(collection):
    _, out, _, _, rows = collection
    assert rows["ras_int16"]["orientation"] == "RAS"
    assert rows["a__lps_float"]["orientation"] == "LPS"
    assert rows["a__b__oblique"]["orientation"] == "LPS oblique"
    assert rows["ras_int16"]["original_spacing"] == "5.0 0.6 0.6"
    assert rows["ras_int16"]["original_shape"] == "26 140 190"
    assert "HU offset -1024 applied" in rows["offset_uint16"]["actions"]
    assert "HU as stored" in rows["rescaled_uint16"]["actions"]  # the reader applied the file's scl_inter
    assert "DICOM rescale" in rows["P7"]["actions"] and rows["P7"]["patient_id"] == "P7"
    for case_id in GOOD:
        assert hashlib.sha256((out / rows[case_id]["output"]).read_bytes()).hexdigest() == rows[case_id]["checksum"]


def test_refused_scans_have_one_line_reasons(collection):
    _, out, summary, _, rows = collection
    refused = {case_id: row["reason"] for case_id, row in rows.items() if row["status"] != "ok"}
    assert set(refused) == set(REFUSED)
    assert "truncated or corrupt" in refused["truncated"]
    assert "MR-like" in refused["mr_like"]
    assert "normalised" in refused["normalised"]
    assert all("\n" not in reason and len(reason) < 300 for reason in refused.values())
    assert summary.skipped == 3 and summary.ok == len(GOOD) + 2
    report = (out / "skipped.csv").read_text()
    assert all(case_id in report for case_id in refused)


def test_duplicate_and_near_empty_are_flagged_and_left_out_of_the_split(collection):
    _, out, _, split, rows = collection
    assert rows["copy_of_lps"]["flags"] == "duplicate: same pixels as a__lps_float"
    assert rows["a__lps_float"]["flags"] == ""
    assert rows["empty"]["flags"].startswith("near-empty")
    listed = (out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()
    assert sorted(listed) == sorted(rows[c]["output"] for c in GOOD) and split == (len(listed) - 1, 1)


def test_truncated_coverage_is_flagged(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sitk_scan(src / "slab.nii.gz", (6, 40, 46), (2.5, 2.5, 2.5))
    _, _ = import_collection(src, tmp_path / "out", ImportOptions(size=SIZE, spacing=SPACING), progress=False)
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["flags"] == "truncated: the scan covers 15 of 140 mm along S-I"


def test_rerun_skips_finished_scans(collection, tmp_path):
    src, out, _, _, rows = collection
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    stamps = {p.name: p.stat().st_mtime_ns for p in (copy / "volumes").iterdir()}
    summary, _ = import_collection(src, copy, ImportOptions(size=SIZE, spacing=SPACING, hu_offset=-1024.0), progress=False)
    assert summary.kept == len(GOOD) + 2 and summary.ok == 0
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "volumes").iterdir()} == stamps


def test_without_hu_offset_the_offset_scan_is_refused_with_the_fix(collection, tmp_path):
    src = collection[0]
    summary, _ = import_collection(src, tmp_path / "out", ImportOptions(size=SIZE, spacing=SPACING), progress=False)
    reason = next(r for r in summary.reasons if r.startswith("offset_uint16"))
    assert "rerun with --hu-offset -1024" in reason


def test_out_inside_src_is_refused(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(DataError, match="inside --src"):
        import_collection(tmp_path, tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.linspace(0, 1, 1000), "normalised"), (np.linspace(0, 900, 1000), "MR-like"),
     (np.r_[np.zeros(500), np.full(500, 1064.0)], "--hu-offset -1024")],
)
def test_non_hu_ranges_are_refused(values, message):
    with pytest.raises(DataError, match=message):
        hu_offset_for(values.astype(np.float32), None)


def test_orientation_codes():
    assert orientation_code(np.eye(3)) == "LPS"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    assert orientation_code(rotation_z(30.0)) == "LPS oblique"
    assert orientation_code(np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]])) == "PIL"


# --- label maps beside the scans (--labels DIR) ---------------------------------------------------------------

BODY_BOX = np.array([[-60.0, 60.0], [-50.0, 50.0], [-40.0, 40.0]])  # LPS mm, x y z
HEART_BOX = np.array([[-20.0, 10.0], [-10.0, 20.0], [-10.0, 14.0]])
LUNG_BOX = np.array([[20.0, 50.0], [-30.0, 30.0], [-30.0, 30.0]])
TS_IDS = {"heart": 51, "lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11}  # TotalSegmentator-style ids


def _inside(points, box):
    return np.all((points > box[:, 0]) & (points < box[:, 1]), axis=-1)


def truth_labels(points):
    """prdit values at LPS points: heart 4, lung 2, body 1 (the rest of the body box), 0 outside."""
    return np.select([_inside(points, HEART_BOX), _inside(points, LUNG_BOX), _inside(points, BODY_BOX)], [4, 2, 1], 0)


def ts_labels(points):
    """The same anatomy as a TotalSegmentator multilabel file: no body, the lung in two lobes (split at x = 35)."""
    lung = _inside(points, LUNG_BOX)
    return np.select([_inside(points, HEART_BOX), lung & (points[..., 0] > 35), lung], [51, 10, 11], 0)


def write_lps_nifti(path, values_of, shape_ijk, spacing, direction, low_corner, dtype):
    """A NIfTI (nibabel, RAS affine) whose voxel (i, j, k) lies at LPS ``origin + direction @ (spacing * ijk)``,
    with the grid covering the box that starts at ``low_corner`` (LPS mm); data = ``values_of(points)``."""
    direction, spacing = np.asarray(direction, dtype=float), np.asarray(spacing, dtype=float)
    steps = direction * spacing  # columns: the LPS step of i, j, k
    # the lowest voxel centres lie half a voxel inside the box; a negative step starts the grid at the high end
    origin = (np.asarray(low_corner) + np.abs(steps).sum(axis=1) / 2
              - np.minimum(steps * (np.array(shape_ijk) - 1), 0).sum(axis=1))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape_ijk], indexing="ij"), axis=-1).astype(float)
    points = origin + ijk @ steps.T
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = flip @ steps, flip @ origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values_of(points).astype(dtype), affine), str(path))
    return points


def ct_of(points):
    return np.select([_inside(points, LUNG_BOX), _inside(points, BODY_BOX)], [-850.0, 40.0], -1000.0)


# The scan: rotated (i -> P, j -> R, k -> I) and anisotropic (1.5, 2, 2.5 mm), over the box [-75, 75] x [-66, 66]
# x [-50, 50] mm; its label map on another grid (identity LPS, 3 x 3 x 2 mm) over the same box.
SCAN_DIRECTION = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1]], dtype=float)  # columns: LPS direction of i, j, k
SCAN_LOW = (-75.0, -66.0, -50.0)


def write_labelled_scan(src, labels, case="rot", label_values=ts_labels, label_shape=(50, 44, 50), label_low=SCAN_LOW):
    write_lps_nifti(src / f"{case}.nii.gz", ct_of, (88, 75, 40), (1.5, 2.0, 2.5), SCAN_DIRECTION, SCAN_LOW, np.int16)
    write_lps_nifti(labels / f"{case}.nii.gz", label_values, label_shape, (3.0, 3.0, 2.0), np.eye(3), label_low, np.uint16)


def test_labels_follow_a_rotated_anisotropic_scan_by_nearest_neighbour(tmp_path):
    from prdit.data.conditions import PHANTOM_LABELS
    from prdit.data.label_maps import LabelOptions
    from prdit.io import load_volume

    src, labels = tmp_path / "src", tmp_path / "seg"
    write_labelled_scan(src, labels)
    mapping = tmp_path / "ts.json"
    mapping.write_text('{"heart": [51], "lung": [10, 11]}')  # no body: filled from the scan
    options = ImportOptions(size=48, spacing=3.0, crop="center", labels=LabelOptions(str(labels), str(mapping)))
    summary, _ = import_collection(src, tmp_path / "out", options, progress=False)
    assert summary.ok == 1, summary.reasons
    volume = nib.load(str(tmp_path / "out" / "volumes" / "rot.nii.gz"))
    written = nib.load(str(tmp_path / "out" / "labels" / "rot.nii.gz"))
    np.testing.assert_array_equal(written.affine, volume.affine)
    assert written.get_data_dtype() == np.uint8
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == PHANTOM_LABELS

    # every output voxel holds the label at its own world position (read from the file's affine) wherever the
    # truth is the same within half a label voxel (3 x 3 x 2 mm: nearest neighbour may take either side of a face)
    # and, for the body filled from the CT, within a scan voxel (the CT is interpolated linearly)
    got = np.asarray(written.dataobj)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in got.shape], indexing="ij"), axis=-1).astype(float)
    points = (ijk @ written.affine[:3, :3].T + written.affine[:3, 3]) * np.array([-1.0, -1.0, 1.0])
    expected = truth_labels(points)
    offsets = [np.array(offset) - 1 for offset in np.ndindex(3, 3, 3)]
    near = [truth_labels(points + o * (1.51, 1.51, 1.01)) for o in offsets]
    safe = np.all([n == expected for n in near], axis=0)
    safe &= np.all([_inside(points + o * 2.51, BODY_BOX) == _inside(points, BODY_BOX) for o in offsets], axis=0)
    assert safe.mean() > 0.8 and {0, 1, 2, 4} <= set(np.unique(expected[safe]))
    np.testing.assert_array_equal(got[safe], expected[safe])
    assert np.any([got == n for n in near], axis=0).all()  # near a face: one of the labels around it
    # the same voxels through prdit's reader: the label map lies on the volume's grid, voxel for voxel
    ct, lab = load_volume(tmp_path / "out" / "volumes" / "rot.nii.gz"), load_volume(tmp_path / "out" / "labels" / "rot.nii.gz")
    assert ct.array.shape == lab.array.shape == (48, 48, 48)
    assert np.median(ct.array[lab.array == 2]) < -700 and np.median(ct.array[lab.array == 1]) > 0
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert "label map rot.nii.gz resampled onto the volume's grid (nearest neighbour), unlabelled body voxels set to body" in row["actions"]


def test_totalsegmentator_mask_folders_with_a_yaml_mapping(tmp_path):
    from prdit.data.label_maps import LabelOptions
    from prdit.io import load_volume

    src, seg = tmp_path / "src", tmp_path / "seg"
    write_labelled_scan(src, seg)
    (seg / "rot.nii.gz").unlink()
    for name, value in TS_IDS.items():  # one binary mask per structure, on the label grid, in DIR/<case>/
        write_lps_nifti(seg / "rot" / f"{name}.nii.gz", lambda p, v=value: ts_labels(p) == v, (50, 44, 50), (3.0, 3.0, 2.0),
                        np.eye(3), SCAN_LOW, np.uint8)
    write_lps_nifti(seg / "rot" / "liver.nii.gz", lambda p: np.zeros(p.shape[:-1]), (50, 44, 50), (3.0, 3.0, 2.0),
                    np.eye(3), SCAN_LOW, np.uint8)  # a structure the mapping leaves out
    mapping = tmp_path / "ts.yaml"
    mapping.write_text("lung: ['lung_*']\nheart: [heart]\nbody: [body_trunc]\n")  # body named, but no such file here
    options = ImportOptions(size=48, spacing=3.0, crop="center", labels=LabelOptions(str(seg), str(mapping)))
    summary, _ = import_collection(src, tmp_path / "out", options, progress=False)
    assert summary.ok == 1, summary.reasons
    from_folder = load_volume(tmp_path / "out" / "labels" / "rot.nii.gz").array
    # the same map as from the multilabel file with a mapping that names the body too (so nothing is filled)
    write_labelled_scan(tmp_path / "src2", tmp_path / "seg2")
    (tmp_path / "map.json").write_text('{"heart": [51], "lung": [10, 11], "body": [99]}')
    labels = LabelOptions(str(tmp_path / "seg2"), str(tmp_path / "map.json"))
    import_collection(tmp_path / "src2", tmp_path / "multi", replace_labels(options, labels), progress=False)
    np.testing.assert_array_equal(from_folder, load_volume(tmp_path / "multi" / "labels" / "rot.nii.gz").array)
    assert set(np.unique(from_folder)) == {0, 2, 4}


def test_label_errors_are_one_line_and_name_the_file(tmp_path):
    from prdit.data.label_maps import LabelOptions

    src, seg = tmp_path / "src", tmp_path / "seg"
    write_labelled_scan(src, seg)
    write_lps_nifti(src / "other.nii.gz", ct_of, (88, 75, 40), (1.5, 2.0, 2.5), SCAN_DIRECTION, SCAN_LOW, np.int16)
    options = ImportOptions(size=48, spacing=3.0, crop="center")
    # a scan without a label map: the whole import stops before any work, naming it and the way out
    with pytest.raises(DataError, match=r"--labels .*seg: 1 of 2 case\(s\) have no label map: other \(for other: looked for other.nii.gz, other/\); .*--missing-labels skip") as error:
        import_collection(src, tmp_path / "out", replace_labels(options, LabelOptions(str(seg))), progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "volumes").exists()
    # ... or that case is skipped, with the reason in the manifest
    summary, _ = import_collection(src, tmp_path / "skip", replace_labels(options, LabelOptions(str(seg), missing="skip")),
                                   progress=False)
    assert summary.ok == 0 and summary.skipped == 2  # rot: its values are TotalSegmentator's, not prdit's
    reasons = dict(r.split(": ", 1) for r in summary.reasons)
    assert reasons["other"].startswith("no label map in ")
    assert "rot.nii.gz: label value 10 is not one of prdit's (body=1, lung=2" in reasons["rot"] and "--label-map" in reasons["rot"]
    # a mapping naming something that is not a prdit label
    bad = tmp_path / "bad.json"
    bad.write_text('{"liver": [5]}')
    with pytest.raises(DataError, match=r"--label-map .*bad.json: unknown label 'liver'; prdit's labels are body, lung, bone"):
        import_collection(src, tmp_path / "bad", replace_labels(options, LabelOptions(str(seg), str(bad))), progress=False)
    # a label map of another region (half the scan along z) is refused, with both boxes
    (src / "other.nii.gz").unlink()
    write_lps_nifti(seg / "rot.nii.gz", ts_labels, (50, 44, 25), (3.0, 3.0, 2.0), np.eye(3), SCAN_LOW, np.uint16)
    (tmp_path / "ok.json").write_text('{"heart": [51], "lung": [10, 11]}')
    summary, _ = import_collection(src, tmp_path / "region", replace_labels(options, LabelOptions(str(seg), str(tmp_path / "ok.json"))),
                                   progress=False)
    assert summary.ok == 0
    assert "rot.nii.gz: label map covers LPS [-75, 75] x [-66, 66] x [-50, 0] mm but its scan covers" in summary.reasons[0]
    assert "export it on the scan's grid" in summary.reasons[0]


def replace_labels(options, labels):
    from dataclasses import replace

    return replace(options, labels=labels)
