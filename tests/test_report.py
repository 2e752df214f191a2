"""The HTML report without a browser: what it gathers, that it embeds the volumes exactly, that it is self-contained."""

import base64
import json
import re

import numpy as np
import pytest

from prdit.cli import main
from prdit.errors import PrditError
from prdit.io import load_volume, sha256_file
from prdit.report import collect, write_report
from prdit.report.content import downsample
from prdit.report.curves import curves_svg
from prdit.report.html import _script_json, render, volume_payload


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
    assert table.count("<tr>") == 1 + 12  # header + every described metric
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
