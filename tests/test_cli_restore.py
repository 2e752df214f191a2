"""``prdit restore``: simulated measurements round-trip through --input with the same geometry and result, every
output carries what it should, bad input is one line."""

import json

import numpy as np
import pytest

from prdit.cli import main
from prdit.data.phantom import write_phantom_dataset
from prdit.inverse.outputs import upsampled_affine
from prdit.io import load_volume

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    write_phantom_dataset(folder, num=1, size=32, seed=10_001)
    return folder / "phantom_10001.nii.gz"


def restore(*args):
    return main(["restore", *args, "--steps", "2", "--no-progress", "--device", "cpu"])


def test_upsampled_affine_keeps_the_field_of_view():
    coarse = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
    fine = upsampled_affine(coarse, 2)
    # the centre of coarse voxel (1, 1, 1) is the mean of fine voxels 2 and 3 along each axis
    np.testing.assert_allclose(fine @ [2.5, 2.5, 2.5, 1], coarse @ [1, 1, 1, 1])
    np.testing.assert_allclose(np.abs(np.diag(fine)[:3]), [1.0, 1.0, 1.5])


def test_super_resolution_from_a_simulation_and_from_its_measurement_agree(truth, tmp_path, capsys):
    assert restore("super-resolution", "--simulate", str(truth), "--out", str(tmp_path / "sim"), "--num-samples", "2") == 0
    assert "PSNR baseline" in capsys.readouterr().out
    sim = tmp_path / "sim"
    for name in ("restored.nii.gz", "restored_std.nii.gz", "baseline.nii.gz", "restored.png", "measurement.nii.gz"):
        assert (sim / name).is_file(), name
    sidecar = json.loads((sim / "restored.json").read_text())
    assert sidecar["operator"] == {"name": "super-resolution", "factor": 2}
    assert len(sidecar["checkpoint_sha256"]) == 64 and sidecar["seed"] == 0 and sidecar["num_samples"] == 2
    assert set(sidecar["metrics"]) == {"restored", "baseline"}
    restored, reference = load_volume(sim / "restored.nii.gz"), load_volume(truth)
    np.testing.assert_allclose(restored.affine, reference.affine, atol=1e-5)
    low = load_volume(sim / "measurement.nii.gz")
    assert low.array.shape == (16, 16, 16) and low.spacing == pytest.approx(tuple(2 * s for s in reference.spacing))

    args = ["super-resolution", "--input", str(sim / "measurement.nii.gz"), "--out", str(tmp_path / "real"), "--num-samples", "2"]
    assert restore(*args) == 0
    again = load_volume(tmp_path / "real" / "restored.nii.gz")
    np.testing.assert_allclose(again.affine, reference.affine, atol=1e-4)
    np.testing.assert_allclose(again.array, restored.array, atol=1.0)  # int16 HU; the measurement was stored as float32
    assert restore(*args) == 2  # nothing is overwritten silently
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_xray_projections_round_trip_and_angles_are_checked(truth, tmp_path, capsys):
    assert restore("xray", "--simulate", str(truth), "--views", "2", "--out", str(tmp_path / "sim")) == 0
    projections = np.load(tmp_path / "sim" / "measurement.npy")
    assert projections.shape[:2] == (2, 32)
    sidecar = json.loads((tmp_path / "sim" / "restored.json").read_text())
    assert sidecar["operator"]["angles_deg"] == [0.0, 90.0]
    measurement = str(tmp_path / "sim" / "measurement.npy")
    assert restore("xray", "--input", measurement, "--angles", "0,90", "--out", str(tmp_path / "real")) == 0
    np.testing.assert_allclose(load_volume(tmp_path / "real" / "restored.nii.gz").array,
                               load_volume(tmp_path / "sim" / "restored.nii.gz").array, atol=1.0)
    capsys.readouterr()
    assert restore("xray", "--input", measurement, "--out", str(tmp_path / "x")) == 2
    assert "needs the projection angles" in capsys.readouterr().err
    assert restore("xray", "--input", measurement, "--angles", "0,45,90", "--out", str(tmp_path / "x")) == 2
    assert "2 projection(s) but 3 angle(s)" in capsys.readouterr().err


def test_inpainting_needs_a_mask_of_the_right_size(truth, tmp_path, capsys):
    assert restore("inpainting", "--simulate", str(truth), "--out", str(tmp_path / "sim"), "--report") == 0
    page = (tmp_path / "sim" / "report.html").read_text()
    assert "prdit restore inpainting" in page and "classical baseline" in page and "PSNR baseline" in page
    mask = load_volume(tmp_path / "sim" / "mask.nii.gz").array
    assert mask.shape == (32, 32, 32) and mask.mean() == pytest.approx(1 - 0.5**3)
    capsys.readouterr()
    measurement = str(tmp_path / "sim" / "measurement.nii.gz")
    assert restore("inpainting", "--input", measurement, "--out", str(tmp_path / "x")) == 2
    assert "needs --mask" in capsys.readouterr().err
    assert restore("inpainting", "--input", measurement, "--mask", measurement.replace("measurement", "restored"),
                   "--out", str(tmp_path / "x")) == 0  # any non-zero volume of the right size is a mask
    write_phantom_dataset(tmp_path / "big", num=1, size=48, seed=3)
    capsys.readouterr()
    assert restore("inpainting", "--input", measurement, "--mask", str(tmp_path / "big" / "phantom_00003.nii.gz"),
                   "--out", str(tmp_path / "y")) == 2
    err = capsys.readouterr().err
    assert "mask has shape (48, 48, 48)" in err and err.count("\n") == 1


def test_measurement_and_truth_errors_are_one_line(truth, tmp_path, capsys):
    assert restore("deblurring", "--out", str(tmp_path / "x")) == 2
    assert "--input FILE, or --simulate" in capsys.readouterr().err
    assert restore("deblurring", "--input", str(truth), "--simulate", str(truth), "--out", str(tmp_path / "x")) == 2
    capsys.readouterr()
    assert restore("super-resolution", "--input", str(truth), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "does not fit super-resolution of a 32x32x32 volume" in err and err.count("\n") == 1
    assert restore("deblurring", "--input", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "x")) == 2
    assert "missing.nii.gz: file not found" in capsys.readouterr().err
