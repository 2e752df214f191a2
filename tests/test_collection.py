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
