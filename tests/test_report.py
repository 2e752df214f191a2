"""The HTML report without a browser: what it gathers, that it embeds the volumes exactly, that it is self-contained."""

import base64
import json
import re

import numpy as np
import pytest

from prdit.cli import main
from prdit.errors import PrditError
from prdit.evaluation.descriptions import METRICS
from prdit.io import load_volume, save_nifti, sha256_file
from prdit.report import collect, write_report
from prdit.report.content import downsample
from prdit.report.curves import curves_svg
from prdit.report.html import _script_json, render, volume_payload
from tests.report_factory import conditional_samples, cube_mask


def test_downsample_averages_whole_blocks_and_scales_the_spacing():
    array = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    pooled, spacing, original = downsample(array, (1.0, 2.0, 3.0), max_side=3)
    assert pooled.shape == (2, 2, 2) and spacing == (2.0, 4.0, 6.0) and original == (5, 4, 4)
    assert pooled[1, 0, 1] == pytest.approx(array[2:4, 0:2, 2:4].mean())  # the odd last slice is dropped
    same, spacing, original = downsample(array, (1.0, 1.0, 1.0), max_side=8)
    assert same is array and original is None


def test_collect_finds_the_samples_their_run_and_its_checkpoint(tiny_run):
    content = collect(tiny_run["samples"], real=tiny_run["data"], max_volumes=3)
    assert [s.key for s in content.sets] == ["samples", "real"]
    assert [len(s.volumes) for s in content.sets] == [2, 3]
    run = content.runs[0]
    assert run.path == tiny_run["run"].resolve() and run.checkpoint_sha256 == sha256_file(run.checkpoint)
    assert "PRDiT-T/6/0" in run.config_text and [r["step"] for r in run.records if "loss" in r] == list(range(1, 9))
    assert content.models[0]["checkpoint_sha256"] == run.checkpoint_sha256  # the sidecar names the same file
    assert content.sets[0].volumes[0].info == "seed 0 · ian-2m, 2 steps · PRDiT-T/6/0"


def test_embedded_volumes_decode_to_the_nifti_values(tiny_run):
    content = collect(tiny_run["samples"])
    payload = volume_payload(content.sets)
    entry = payload["volumes"][1]
    decoded = np.frombuffer(base64.b64decode(entry["data"]), dtype="<i2").reshape(entry["shape"])
    expected = np.rint(load_volume(tiny_run["samples"] / "sample_000001.nii.gz").array)
    np.testing.assert_array_equal(decoded, expected)
    assert entry["spacing"] == list(load_volume(tiny_run["samples"] / "sample_000001.nii.gz").spacing)
    assert payload["windows"]["bone"] == [400.0, 1800.0]


def test_report_is_one_self_contained_page(tiny_run, tmp_path):
    out = write_report(tiny_run["samples"], tmp_path / "r.html")
    page = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no CDN, no remote anything
    assert "<link" not in page and page.count("<script") == 2 and page.count('<script type="application/json"') == 1
    content = collect(tiny_run["samples"])
    assert content.runs[0].checkpoint_sha256 in page and "<svg" in page and "training loss" in page
    assert "No metrics in this report" in page  # no --real: says how to get them
    with pytest.raises(FileExistsError):
        write_report(tiny_run["samples"], out)
    run_only = write_report(tiny_run["run"], tmp_path / "run.html").read_text()
    assert "<script" not in run_only and "<svg" in run_only and content.runs[0].checkpoint_sha256 in run_only


def test_report_with_real_volumes_has_the_readable_metrics_table(tiny_run, tmp_path):
    out = write_report(tiny_run["samples"], tmp_path / "r.html", real=tiny_run["data"])
    page = out.read_text()
    table = page[page.index('<table class="metrics">'):page.index("</table>")]
    assert "HU histogram distance (Wasserstein-1)" in table and "Lung fraction" in table and "↓" in table
    assert "random-init network" in page and "N = 2 volumes is below the feature dimension" in page
    assert table.count("<tr>") == 1 + len(METRICS)  # header + every described metric
    floor_cells = re.findall(r'<td class="reference"[^>]*>([^<]*)</td>', table)
    assert all(cell != "–" for cell in floor_cells)  # 6 real volumes: a floor for every metric


def test_script_json_cannot_close_its_script_element():
    text = _script_json({"name": "</script><script>alert(1)</script>"})
    assert "</" not in text and json.loads(text)["name"].startswith("</script>")


def test_curves_need_records_and_show_each_logged_quantity():
    assert curves_svg([]) is None
    records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "steps_per_s": 5.0} for s in range(1, 40)] + [{"step": 20, "val_mse": 0.1}]
    svg = curves_svg(records)
    assert svg.startswith("<svg") and all(t in svg for t in ("training loss", "validation MSE", "learning rate", "speed"))


def test_render_without_volumes_or_runs_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrditError, match="no sampled volumes"):
        collect(tmp_path / "empty")
    with pytest.raises(PrditError, match="not a folder"):
        collect(tmp_path / "missing")


def test_cli_report_writes_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(tiny_run["samples"]), "--out", str(out), "--max-volumes", "1"]) == 0
    assert "open it in a browser" in capsys.readouterr().out
    assert render(collect(tiny_run["samples"], max_volumes=1)).count('class="viewer ') == 1
    assert main(["report", str(tiny_run["samples"]), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_sample_report_flag_writes_a_report_beside_the_volumes(tiny_run, tmp_path):
    out = tmp_path / "sampled"
    assert main(["sample", "--ckpt", str(tiny_run["run"]), "--output-dir", str(out), "--num-volumes", "1", "--steps", "2",
                 "--device", "cpu", "--no-progress", "--report"]) == 0
    page = (out / "report.html").read_text()
    assert page.count('class="viewer ') == 1 and "sample_000000" in page


def test_volume_report_shows_named_rows_of_any_size(tiny_run, tmp_path):
    from prdit.io import save_nifti
    from prdit.report import write_volume_report

    small = tmp_path / "measurement.nii.gz"
    save_nifti(small, np.full((16, 16, 16), -500, dtype=np.int16), (22.5, 22.5, 22.5), dtype=np.int16)
    truth = sorted(tiny_run["data"].glob("*.nii.gz"))[:1]
    page = write_volume_report(tmp_path / "r.html", {"measurement": [small], "restored": [tiny_run["samples"] / "sample_000000.nii.gz"],
                                                     "truth": truth}, title="restore", real="truth").read_text()
    assert page.count('class="viewer generated"') == 2 and page.count('class="viewer real"') == 1
    payload = json.loads(re.search(r'<script type="application/json" id="prdit-volumes">(.*?)</script>', page).group(1))
    assert [v["shape"] for v in payload["volumes"]] == [[16, 16, 16], [32, 32, 32], [32, 32, 32]]


def test_real_volumes_of_another_size_are_shown_without_metrics(tiny_run, tmp_path):
    from prdit.data.phantom import generate_phantom
    from prdit.io import save_nifti

    for seed in range(2):
        volume, spacing = generate_phantom(48, seed=seed)
        save_nifti(tmp_path / "real48" / f"p{seed}.nii.gz", volume, spacing, dtype=np.int16)
    page = write_report(tiny_run["samples"], tmp_path / "r.html", real=tmp_path / "real48").read_text()
    assert page.count('class="viewer ') == 2 and "No metrics: " in page and "(48, 48, 48)" in page
    assert '<table class="metrics">' not in page


# --- label maps as contours -------------------------------------------------------------------------------------


def _ring(square: np.ndarray) -> np.ndarray:
    """The pixels of a 2D boolean image with a 4-neighbour outside it (the image border counts as inside)."""
    padded = np.pad(square, 1, mode="edge")
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return square & ~inner


def test_contour_of_a_cube_is_exactly_its_outline_in_every_plane():
    from prdit.report.labels import FACE_BITS, PLANE_AXES, contour_faces, on_contour

    mask = cube_mask(12, (3, 9))
    edges = contour_faces(mask)
    inside = np.arange(12)
    inside = (inside >= 3) & (inside < 9)
    for plane, (a, b) in PLANE_AXES.items():
        contour = on_contour(edges, plane)
        depth_axis = 3 - a - b
        for index in range(12):
            got = np.take(contour, index, axis=depth_axis)
            expected = np.zeros((12, 12), dtype=bool)
            if inside[index]:
                expected[3:9, 3:9] = True
                expected[4:8, 4:8] = False  # a one-voxel outline of the 6 x 6 square
            np.testing.assert_array_equal(got, expected, err_msg=f"{plane} {index}")
    # the faces: exactly the cube's six sides, each voxel marking the side its outside neighbour lies on
    for axis in range(3):
        for side, layer in ((-1, 3), (1, 8)):
            marked = (edges & FACE_BITS[(axis, side)]) != 0
            expected = (mask == 1) & (np.indices(mask.shape)[axis] == layer)
            np.testing.assert_array_equal(marked, expected)


def test_contours_of_touching_labels_and_at_the_volume_border():
    from prdit.report.labels import contour_faces, on_contour

    mask = cube_mask(10, (0, 10), (3, 7))  # label 1 fills the volume, label 2 a cube inside it
    contour = on_contour(contour_faces(mask), "axial")
    for z in range(10):
        label2 = np.zeros((10, 10), dtype=bool)
        if 3 <= z < 7:
            label2[3:7, 3:7] = True
        expected_2 = _ring(label2)
        # label 1 is outlined where it touches label 2 in the slice, and never along the volume's border
        expected_1 = np.zeros((10, 10), dtype=bool)
        if label2.any():
            grown = np.zeros((10, 10), dtype=bool)
            grown[2:8, 2:8] = True
            grown[[2, 2, 7, 7], [2, 7, 2, 7]] = False  # 4-neighbours only: the corners do not touch
            expected_1 = grown & ~label2
        np.testing.assert_array_equal(contour[z] & (mask[z] == 2), expected_2)
        np.testing.assert_array_equal(contour[z] & (mask[z] == 1), expected_1)


def test_report_draws_the_condition_mask_the_sidecars_record(tmp_path):
    mask = cube_mask(16, (3, 13), (6, 10))
    samples, mask_path = conditional_samples(tmp_path, mask, {"body": 1, "heart": 2})
    content = collect(samples)
    overlays = [v.overlay for v in content.sets[0].volumes]
    assert all(o is not None and o.source == str(mask_path) for o in overlays)
    payload = volume_payload(content.sets)
    assert len(payload["masks"]) == 1 and [v["mask"] for v in payload["volumes"]] == [0, 0]  # one copy for both
    entry = payload["masks"][0]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(entry["labels"]), np.uint8).reshape(16, 16, 16), mask)
    assert entry["names"] == {"body": 1, "heart": 2} and set(entry["colours"]) == {"body", "heart"}
    page = write_report(samples, tmp_path / "r.html").read_text()
    assert 'id="show-contours"' in page and 'class="legend"' in page and not content.notes


def test_a_changed_or_missing_condition_mask_is_a_warning_in_the_page(tmp_path):
    samples, mask_path = conditional_samples(tmp_path, cube_mask(16, (3, 13)), {"body": 1})
    save_nifti(mask_path, cube_mask(16, (4, 12)), (2.0, 1.5, 1.5), dtype=np.uint8, overwrite=True)
    with pytest.warns(UserWarning, match="has changed since sampling"):
        content = collect(samples)
    assert content.sets[0].volumes[0].overlay is not None  # still drawn, with the warning beside it
    assert any("changed since sampling" in n for n in content.notes)
    save_nifti(mask_path, cube_mask(8, (2, 6)), (2.0, 1.5, 1.5), dtype=np.uint8, overwrite=True)  # now another grid
    with pytest.warns(UserWarning):
        content = collect(samples)
    assert content.sets[0].volumes[0].overlay is None
    assert any("no contours" in n and "(8, 8, 8)" in n for n in content.notes)
    page = render(content)
    assert "no contours" in page and 'id="show-contours"' not in page
    mask_path.unlink()
    content = collect(samples)
    assert any("is not found here; pass --labels" in n for n in content.notes)


def test_labels_option_file_and_folder_and_another_grid_is_an_error(tmp_path):
    samples, mask_path = conditional_samples(tmp_path, cube_mask(16, (3, 13)), {"body": 1})
    other = save_nifti(tmp_path / "other.nii.gz", cube_mask(16, (5, 11), (7, 9)), (2.0, 1.5, 1.5), dtype=np.uint8)
    content = collect(samples, labels=other)  # one file: over every sample, instead of the recorded mask
    assert {v.overlay.source for v in content.sets[0].volumes} == {str(other)}
    assert content.sets[0].volumes[0].overlay.names == {"body": 1, "lung": 2}  # no labels.json: prdit's values
    # a folder: matched by name, for real volumes too (a prdit data folder: DIR/labels/NAME)
    real = tmp_path / "real"
    save_nifti(real / "ct_a.nii.gz", np.full((16, 16, 16), -500.0), (2.0, 1.5, 1.5), dtype=np.int16)
    save_nifti(real / "labels" / "ct_a.nii.gz", cube_mask(16, (2, 14)), (2.0, 1.5, 1.5), dtype=np.uint8)
    content = collect(samples, real=real, labels=real)
    assert content.sets[1].volumes[0].overlay.source == str(real / "labels" / "ct_a.nii.gz")
    assert content.sets[0].volumes[0].overlay.source == str(mask_path)  # no file of its name: the recorded mask
    wrong = save_nifti(tmp_path / "wrong.nii.gz", cube_mask(16, (3, 13)), (1.0, 1.5, 1.5), dtype=np.uint8)
    with pytest.raises(PrditError, match=r"wrong.nii.gz: label map is \(16, 16, 16\) voxels at 1×1.5×1.5 mm but sample_000000.nii.gz") as error:
        collect(samples, labels=wrong)
    assert "\n" not in str(error.value)
    with pytest.raises(PrditError, match="no such file or folder"):
        collect(samples, labels=tmp_path / "nothing")


def test_label_map_is_reduced_with_its_volume(tmp_path):
    mask = cube_mask(16, (3, 13), (6, 10))
    samples, _ = conditional_samples(tmp_path, mask, {"body": 1, "fat": 2})
    volume = collect(samples, max_side=8).sets[0].volumes[0]
    assert volume.array.shape == volume.overlay.labels.shape == (8, 8, 8)
    np.testing.assert_array_equal(volume.overlay.labels, mask[1::2, 1::2, 1::2])  # each 2^3 block's centre voxel


def test_cli_report_labels(tmp_path, capsys):
    samples, mask_path = conditional_samples(tmp_path, cube_mask(16, (3, 13)), {"body": 1})
    main(["report", str(samples), "--labels", str(mask_path), "--out", str(tmp_path / "r.html")])
    assert "label contours" in (tmp_path / "r.html").read_text()
    save_nifti(mask_path, cube_mask(16, (4, 12)), (2.0, 1.5, 1.5), dtype=np.uint8, overwrite=True)
    main(["report", str(samples), "--out", str(tmp_path / "r2.html")])
    assert "[report] warning: sample_000000.nii.gz:" in capsys.readouterr().out
