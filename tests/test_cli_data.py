import numpy as np
import pytest
from dicom_factory import ramp_volume, write_series

from prdit.cli import build_parser
from prdit.data.manifest import read_manifest
from prdit.errors import DataError
from prdit.io import load_volume


def _run(argv):
    args = build_parser().parse_args(["data", *argv])
    args.func(args)
    return args


def test_defaults_follow_the_paper():
    parser = build_parser()
    lidc = parser.parse_args(["data", "lidc", "--src", "s", "--out", "o"])
    assert (lidc.size, lidc.spacing, lidc.normalize, lidc.percentile, lidc.workers) == (256, 1.0, "hu", 99.9, 1)
    rad = parser.parse_args(["data", "rad", "--src", "s", "--out", "o"])
    assert (rad.size, rad.spacing, rad.percentile, rad.npz_key) == (256, None, 99.5, "ct")
    split = parser.parse_args(["data", "split", "--manifest", "m.csv"])
    assert (split.val, split.seed) == (200, 42)


def test_lidc_then_split_from_the_command_line(tmp_path, capsys):
    hu, origin = ramp_volume()
    for patient in ("P1", "P2", "P3"):
        write_series(tmp_path / "src" / patient, hu, origin=origin, patient_id=patient)
    out = tmp_path / "out"
    _run(["lidc", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "16", "--spacing", "2", "--min-slices", "8",
          "--normalize", "paper", "--no-progress"])
    assert "3 volume(s) written" in capsys.readouterr().out
    rows = read_manifest(out / "manifest.csv")
    assert [r.status for r in rows] == ["ok"] * 3 and rows[0].normalize == "paper"
    volume = load_volume(out / rows[0].output)
    # The official route zooms the voxel grid corner to corner: steps close to, not exactly, 2 mm.
    assert volume.array.shape == (16, 16, 16) and volume.spacing == pytest.approx((2.0, 2.0, 2.0), rel=0.1)
    assert 0.0 <= volume.array.min() and volume.array.max() <= 1.0

    _run(["split", "--manifest", str(out / "manifest.csv"), "--val", "1", "--seed", "42"])
    assert "(2 volumes)" in capsys.readouterr().out
    listed = (out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()
    assert sorted(listed) == [r.output for r in rows]


def test_rad_command_passes_its_options(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    np.savez_compressed(tmp_path / "src" / "x.npz", hu=np.full((8, 8, 8), 50.0, np.float32))
    _run(["rad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "8", "--npz-key", "hu",
          "--source-spacing", "1.5", "--no-progress"])
    row = read_manifest(tmp_path / "out" / "manifest.csv")[0]
    assert row.status == "ok" and row.original_spacing == [1.5, 1.5, 1.5] and row.hu_mean == 50.0


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="source folder not found"):
        _run(["lidc", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])


def test_rad_labels_from_the_command_line_and_their_errors(tmp_path, capsys):
    import json

    from prdit.errors import PrditError

    (tmp_path / "src").mkdir()
    (tmp_path / "seg").mkdir()
    for case in ("a", "b"):
        np.savez_compressed(tmp_path / "src" / f"{case}.npz", ct=np.full((8, 8, 8), 50.0, np.float32))
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:6, 2:6, 2:6] = 7  # a source id, mapped to heart
    np.savez_compressed(tmp_path / "seg" / "a.npz", labels=seg)
    (tmp_path / "map.yaml").write_text("heart: [7]\n")
    common = ["rad", "--src", str(tmp_path / "src"), "--size", "8", "--no-progress", "--labels", str(tmp_path / "seg"),
              "--label-map", str(tmp_path / "map.yaml")]
    with pytest.raises(DataError, match=r"1 of 2 case\(s\) have no label map: b .*--missing-labels skip"):
        _run([*common, "--out", str(tmp_path / "fail")])
    _run([*common, "--out", str(tmp_path / "out"), "--missing-labels", "skip"])
    assert "1 volume(s) written, 1 skipped" in capsys.readouterr().out
    labels = load_volume(tmp_path / "out" / "labels" / "a.nii.gz").array
    assert set(np.unique(labels)) == {1, 4} and (labels[2:6, 2:6, 2:6] == 4).all()  # heart, the rest filled as body
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["heart"] == 4
    rows = {r.case_id: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["b"].status == "skipped" and rows["b"].reason.startswith("no label map in ")
    with pytest.raises(PrditError, match="--label-map maps the files of --labels DIR; pass --labels too"):
        _run(["rad", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "x"), "--label-map", "m.json"])
