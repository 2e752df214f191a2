"""The README's main command, end to end: phantoms -> stage 1 -> stage 2 -> samples -> metrics -> index.md."""

import json

import pytest

from prdit.demo import SHIPPED_WEIGHTS, run_demo
from prdit.errors import PrditError
from prdit.io import load_volume


def check_demo_folder(out, expect_shipped: bool) -> dict:
    index = (out / "index.md").read_text()
    for picture in ("data_phantom.png", "stage1_loss.png", "stage2_loss.png", "samples_demo_run/samples_grid.png"):
        assert (out / picture).is_file() and picture in index
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    report = (out / "report.html").read_text()
    assert "report.html" in index and 'id="prdit-volumes"' in report and "Lung fraction" in report
    assert report.count('class="viewer ') == (3 if expect_shipped else 2)  # each sample set and the real phantoms
    sets = ["samples", "samples_demo_run"] if expect_shipped else ["samples_demo_run"]
    assert list(metrics) == sets
    for name in sets:
        volumes = sorted((out / name).glob("sample_*[0-9].nii.gz"))
        assert volumes and all((out / name / (v.name[: -len(".nii.gz")] + ".json")).is_file() for v in volumes)
        volume = load_volume(volumes[0])
        assert volume.array.shape == (32, 32, 32) and -1100 <= volume.array.min() and volume.array.max() <= 3100
        assert "fid" in metrics[name] and "offline" in metrics[name]
    return metrics


def test_quick_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_demo(tmp_path / "demo", quick=True, progress=False)
    check_demo_folder(tmp_path / "demo", expect_shipped=SHIPPED_WEIGHTS.is_file())
    with pytest.raises(PrditError, match="already holds a demo"):
        run_demo(tmp_path / "demo", quick=True, progress=False)


@pytest.mark.slow
def test_full_demo_samples_look_like_the_data(tmp_path, monkeypatch):
    """The default demo: the shipped model's samples match the phantoms' tissue make-up."""
    monkeypatch.chdir(tmp_path)
    run_demo(tmp_path / "demo", progress=False)
    metrics = check_demo_folder(tmp_path / "demo", expect_shipped=True)
    offline = metrics["samples"]["offline"]
    assert offline["hu_histogram"]["wasserstein_hu"] < 100
