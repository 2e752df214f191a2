import numpy as np
import pytest
from dicom_factory import ramp_volume, read_instance, truncate, write_localizer, write_series

from prdit.data.dicom import (
    axial_rejection_reason,
    group_series,
    load_series,
    read_slice_header,
    scan_headers,
    select_cases,
    to_sitk_image,
)
from prdit.errors import DataError
from prdit.hu import AIR_HU


def _series(folder, **kwargs):
    hu, origin = ramp_volume()
    uid, paths = write_series(folder, hu, origin=origin, **kwargs)
    headers, corrupt = scan_headers(folder)
    series, _ = group_series(headers)
    return hu, origin, next(s for s in series if s.uid == uid), paths


def test_discovery_picks_the_axial_series_and_reports_the_rest(tmp_path):
    folder = tmp_path / "LIDC-IDRI-0001" / "study" / "series"
    hu, origin = ramp_volume()
    main_uid, paths = write_series(folder, hu, origin=origin)
    thick_uid, _ = write_series(folder, hu[::2], spacing=(5.0, 0.7, 0.7), origin=origin, prefix="THICK")
    write_localizer(folder)
    (folder / "069.xml").write_text("<LidcReadMessage/>")  # annotations are not DICOM: ignored silently
    corrupt = folder / "IMG9999.dcm"
    corrupt.write_bytes(paths[0].read_bytes())
    truncate(corrupt, 0.2)

    headers, bad = scan_headers(tmp_path)
    assert [p for p, _ in bad] == [str(corrupt)]
    assert "truncated" in bad[0][1]
    series, rejected = group_series(headers)
    assert any("localizer" in reason for _, reason in rejected)
    cases, not_chosen = select_cases(series, min_slices=8)
    assert [c.series.uid for c in cases] == [main_uid]
    assert cases[0].case_id == "PAT-0001"
    assert any(thick_uid in label and "larger axial series" in reason for label, reason in not_chosen)

    every, _ = select_cases(series, all_series=True, min_slices=8)
    assert {c.series.uid for c in every} == {main_uid, thick_uid}
    assert len({c.case_id for c in every}) == 2


def test_slices_are_ordered_by_position_not_by_name_or_instance(tmp_path):
    hu, origin, series, paths = _series(tmp_path)
    # The factory numbers instances from the head down and shuffles names: neither matches z order.
    assert read_instance(paths[0]) > read_instance(paths[-1])
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    ct = load_series(series)
    np.testing.assert_array_equal(ct.hu, hu)  # RescaleIntercept -1024 applied, slice 0 is the most inferior
    assert ct.spacing == pytest.approx((0.7, 0.7, 2.5))
    np.testing.assert_allclose(ct.origin, origin, atol=1e-4)
    np.testing.assert_allclose(ct.direction, np.eye(3))
    assert ct.notes == [] and ct.bad_files == []


def test_sitk_image_maps_pixels_to_their_patient_position(tmp_path):
    hu, origin, series, _ = _series(tmp_path, row_direction=-1.0)
    ct = load_series(series)
    image = to_sitk_image(ct)
    # Rows run right-to-left, so the normal (row x column) points to the feet: the series runs head to feet,
    # and stored column 0 is the patient's leftmost column. The geometry says so; canonical resampling undoes it.
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, 1.0, -1.0]))
    x, y, z = image.TransformIndexToPhysicalPoint((0, 5, 3))
    assert (x, y, z) == pytest.approx((origin[0] + 31 * 0.7, origin[1] + 5 * 0.7, origin[2] + 12 * 2.5), abs=1e-3)
    assert ct.hu[3, 5, 0] == hu[12, 5, 31]


def test_rescale_slope_intercept_and_padding_become_hu_and_air(tmp_path):
    hu, origin = ramp_volume()
    hu[:, 10, 10] = -3024.0  # out-of-field marker, stored signed
    uid, _ = write_series(tmp_path, hu, origin=origin, intercept=-1000.0, slope=2.0, signed=True, padding_value=-4000)
    series = group_series(scan_headers(tmp_path)[0])[0][0]
    ct = load_series(series)
    assert (ct.hu[:, :2, :2] == AIR_HU).all()  # PixelPaddingValue
    assert (ct.hu[:, 10, 10] == AIR_HU).all()  # below -1500 HU
    inside = np.ones(hu.shape, bool)
    inside[:, :2, :2] = inside[:, 10, 10] = False
    assert np.abs(ct.hu - hu)[inside].max() <= 1.0  # slope 2: stored values round to 2 HU steps


def test_missing_slice_is_interpolated_and_larger_gaps_skip(tmp_path):
    hu, origin = ramp_volume()
    write_series(tmp_path / "one", hu, origin=origin, slices=[k for k in range(16) if k != 7])
    ct = load_series(group_series(scan_headers(tmp_path / "one")[0])[0][0])
    assert ct.hu.shape == hu.shape
    np.testing.assert_allclose(ct.hu[7], (hu[6] + hu[8]) / 2)  # linear in z
    assert "1 missing slice" in ct.notes[0]

    write_series(tmp_path / "two", hu, origin=origin, slices=[k for k in range(16) if k not in (7, 8)])
    with pytest.raises(DataError, match="missing slices"):
        load_series(group_series(scan_headers(tmp_path / "two")[0])[0][0])


def test_irregular_spacing_is_resampled_onto_the_median_step(tmp_path):
    hu, origin = ramp_volume((15, 32, 32), (1.25, 0.7, 0.7))
    kept = [0, 2, 4, 5, 6, 8, 10, 12, 14]  # gaps of 2.5 mm with two of 1.25 mm
    write_series(tmp_path, hu, spacing=(1.25, 0.7, 0.7), origin=origin, slices=kept)
    ct = load_series(group_series(scan_headers(tmp_path)[0])[0][0])
    assert ct.spacing[2] == pytest.approx(2.5) and ct.hu.shape[0] == 8
    np.testing.assert_allclose(ct.hu, hu[::2])  # every 2.5 mm grid point is an original slice
    assert ct.notes[0].startswith("irregular spacing 1.25-2.5 mm")


def test_duplicate_positions_are_dropped(tmp_path):
    hu, origin = ramp_volume()
    uid, _ = write_series(tmp_path, hu, origin=origin)
    write_series(tmp_path, hu, origin=origin, series_uid=uid, slices=[4], prefix="DUP")
    series = group_series(scan_headers(tmp_path)[0])[0][0]
    assert len(series.slices) == 17
    ct = load_series(series)
    np.testing.assert_array_equal(ct.hu, hu)
    assert "duplicating a position" in ct.notes[0]


def test_gantry_tilt_is_detected(tmp_path):
    _, _, series, _ = _series(tmp_path, tilt_deg=15.0)
    with pytest.raises(DataError, match="gantry tilt of 15.0"):
        load_series(series)


def test_unreadable_slice_is_named_and_the_series_still_loads(tmp_path):
    hu, _, series, _ = _series(tmp_path)
    broken = sorted(series.slices, key=lambda h: h.position[2])[7].path
    truncate(broken, 0.97)  # the header and the size check pass; the pixel data is short
    ct = load_series(series)
    assert [p for p, _ in ct.bad_files] == [str(broken)]
    assert ct.notes[0] == f"skipped unreadable file {broken.name}"
    assert ct.hu.shape == hu.shape
    np.testing.assert_allclose(ct.hu[7], (hu[6] + hu[8]) / 2)


def test_non_axial_and_short_series_are_not_candidates(tmp_path):
    _, _, series, _ = _series(tmp_path)
    assert axial_rejection_reason(series, min_slices=20) == "16 usable slice(s), fewer than 20"
    write_localizer(tmp_path / "scout")
    header = read_slice_header(tmp_path / "scout" / "SCOUT0001.dcm")
    assert header.unusable_reason() == "localizer/scout image"
    assert read_slice_header(tmp_path / "scout" / "SCOUT0001.dcm").normal[2] == 0  # coronal
    (tmp_path / "notes.txt").write_text("not dicom")
    assert read_slice_header(tmp_path / "notes.txt") is None
