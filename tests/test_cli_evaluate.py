import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from prdit.cli.evaluate import add_parser, script_main
from prdit.errors import ConfigError
from prdit.evaluation import evaluate_sets

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _hu_set(rng, n, shift=0.0, side=16):
    return [(gaussian_filter(rng.normal(size=(side,) * 3), 1.0) * 400 - 300 + shift).astype(np.float32) for _ in range(n)]


@pytest.fixture
def folders(tmp_path, rng):
    for name, shift in (("real", 0.0), ("fake0", 0.0), ("fake1", 400.0)):
        (tmp_path / name).mkdir()
        for index, volume in enumerate(_hu_set(rng, 6, shift)):
            np.save(tmp_path / name / f"v{index}.npy", volume)
    return tmp_path


def _run(argv):
    parser = argparse.ArgumentParser(prog="prdit")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)


def test_evaluate_sets_reports_every_metric_with_its_protocol(rng, tmp_path):
    real, matched, shifted = _hu_set(rng, 6), _hu_set(rng, 6), _hu_set(rng, 6, shift=400.0)
    with pytest.warns(UserWarning, match="below the feature dimension"):
        same = evaluate_sets(real, real, cache_dir=tmp_path)
        near = evaluate_sets(real, matched, cache_dir=tmp_path)
        far = evaluate_sets(real, shifted, cache_dir=tmp_path, spacing=(2.0, 1.0, 1.0))
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["mmd"] == pytest.approx(0.0, abs=1e-6)
    assert far["fid"] > near["fid"] > 0 and far["mmd"] > near["mmd"]
    assert far["offline"]["hu_histogram"]["wasserstein_hu"] > 300
    assert 0 < far["ms_ssim"]["fake"]["mean"] < 1 and far["ms_ssim"]["real"]["pairs"] == 15
    protocol = json.loads(json.dumps(far))["protocol"]  # JSON-serialisable
    assert protocol["n_real"] == 6 and protocol["n_fake"] == 6 and protocol["image_size"] == [16, 16, 16]
    assert "random-init fallback" in protocol["weights"] and protocol["weights_sha256"] is None
    assert protocol["mmd_gamma"] > 0 and protocol["spacing_mm"] == [2.0, 1.0, 1.0]
    assert protocol["real_feature_cache"] == "off"  # in-memory arrays have no file fingerprint


def test_fid_command_prints_writes_json_caches_and_never_overwrites(folders, capsys):
    out = folders / "fid.json"
    argv = ["evaluate", "fid", "--data_root_real", str(folders / "real"), "--data_root_fake", str(folders / "fake1"),
            "--cache_dir", str(folders / "cache"), "--gpu_id", "-1", "--dataset", "phantom", "--no-progress", "--out", str(out)]
    _run(argv)
    printed = capsys.readouterr()
    assert printed.out.startswith("FID: ") and "random-init fallback" in printed.err
    first = json.loads(out.read_text())
    assert first["protocol"]["real_feature_cache"] == "miss" and first["protocol"]["dataset"] == "phantom"
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(argv)
    _run(argv + ["--overwrite"])
    second = json.loads(out.read_text())
    assert second["protocol"]["real_feature_cache"] == "hit" and second["fid"] == pytest.approx(first["fid"], rel=1e-6)


def test_mmd_msssim_and_offline_commands(folders, capsys):
    data = ["--data_root_real", str(folders / "real"), "--data_root_fake", str(folders / "fake0")]
    _run(["evaluate", "mmd", *data, "--no_cache", "--gpu_id", "-1", "--no-progress"])
    _run(["evaluate", "msssim", *data, "--max_pairs", "5"])
    _run(["evaluate", "offline", *data])
    printed = capsys.readouterr().out
    assert "MMD: " in printed and "MS-SSIM diversity: " in printed and "HU histogram distance (Wasserstein-1): " in printed
    assert '"mmd2_rbf_unbiased"' in printed and '"pairs": 5' in printed


def test_msssim_paper_protocol_uses_the_3_voxel_window(folders, capsys):
    data = ["--data_root_fake", str(folders / "fake0"), "--max_pairs", "3"]
    _run(["evaluate", "msssim", *data, "--protocol", "paper"])
    paper = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    _run(["evaluate", "msssim", *data])
    default = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert paper["fake"]["kernel"].startswith("gaussian 3^3") and paper["protocol"]["protocol"] == "paper"
    assert default["fake"]["kernel"].startswith("gaussian 11^3") and paper["fake"]["scales"] > default["fake"]["scales"]
    assert paper["fake"]["mean"] != pytest.approx(default["fake"]["mean"], abs=1e-3)


def test_mmd_help_names_the_biased_rbf_estimator(capsys):
    with pytest.raises(SystemExit):
        _run(["evaluate", "mmd", "--help"])
    text = capsys.readouterr().out
    assert "biased RBF" in text and "unbiased, linear" not in text


def test_offline_command_prints_direction_floor_and_interval_of_every_headline_metric(folders, capsys):
    from prdit.evaluation.descriptions import METRICS

    out = folders / "offline.json"
    _run(["evaluate", "offline", "--data_root_real", str(folders / "real"), "--data_root_fake", str(folders / "fake1"),
          "--bootstrap", "20", "--out", str(out)])
    headline = capsys.readouterr().out.split("{")[0].strip().splitlines()
    described = sum(key.startswith("offline.") for key in METRICS)
    assert described - 4 <= len(headline) <= described  # blobs have no lungs: lung-mask HU rows are left out
    assert all("is better" in line and ("real vs real" in line or "real " in line) and "95% CI" in line for line in headline)
    assert any(line.startswith("Anatomy score: ") and "lower is better; real vs real" in line for line in headline)
    result = json.loads(out.read_text())
    low, high = result["bootstrap_95"]["hu_histogram.wasserstein_hu"]
    assert low <= result["hu_histogram"]["wasserstein_hu"] <= high  # fake1 is real shifted by 400 HU
    assert result["real_vs_real_floor"]["hu_histogram"]["wasserstein_hu"] < 0.25 * low


def test_memorisation_command_flags_copied_training_volumes(folders, capsys, rng):
    train, heldout, copies = (folders / name for name in ("train", "heldout", "copies"))
    for folder in (train, heldout, copies):
        folder.mkdir()
    volumes = _hu_set(rng, 16)
    for index, volume in enumerate(volumes[:12]):
        np.save(train / f"t{index:02d}.npy", volume)
    for index, volume in enumerate(volumes[12:]):
        np.save(heldout / f"h{index:02d}.npy", volume)
    for index in (2, 5, 9):
        np.save(copies / f"copy_of_t{index:02d}.npy", volumes[index] + 1.0)
    out = folders / "memorisation.json"
    argv = ["evaluate", "memorisation", "--data_root_fake", str(copies), "--data_root_train", str(train),
            "--data_root_heldout", str(heldout), "--out", str(out)]
    with pytest.raises(Exception, match="--intensity-from"):  # no sidecars: the model's HU range is unknown
        _run(argv)
    (copies / "model.json").write_text(json.dumps({"intensity": {"mode": "hu", "window": [-1000, 1000]}}))
    argv += ["--intensity-from", str(copies / "model.json")]
    _run(argv)
    printed = capsys.readouterr().out
    assert "NN distance to the training set, samples / held-out volumes: 0.0" in printed and "real vs real" in printed
    result = json.loads(out.read_text())
    assert result["copies"]["fraction_below"] == 1.0
    assert sorted((entry["sample"], entry["train"]) for entry in result["closest"]) == [
        ("copy_of_t02.npy", "t02.npy"), ("copy_of_t05.npy", "t05.npy"), ("copy_of_t09.npy", "t09.npy")]
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(argv)
    (heldout / "h00.npy").unlink(), (heldout / "h01.npy").unlink()
    with pytest.raises(Exception, match="at least 4 held-out"):
        _run(argv + ["--overwrite"])


def test_wgan_trains_both_critics_then_evaluates(folders, capsys):
    argv = ["--seed", "0", "--save_path", str(folders / "critics"), "--batch_size", "4", "--img_size", "16", "--gpu_id", "-1",
            "--data_root_real", str(folders / "real"), "--data_root_fake_0", str(folders / "fake0"),
            "--data_root_fake_1", str(folders / "fake1"), "--train_size", "4", "--val_size", "2", "--steps", "6", "--no-progress"]
    assert script_main("wgan", argv) == 0
    assert (folders / "critics" / "critic_fake_0.pt").is_file() and (folders / "critics" / "critic_fake_1.pt").is_file()
    assert script_main("wgan", argv + ["--eval"]) == 0
    result = json.loads((folders / "critics" / "wgan_eval.json").read_text())
    assert set(result["wasserstein"]) == {"fake_0", "fake_1"} and result["wasserstein"]["fake_1"]["n_val_fake"] == 2
    capsys.readouterr()
    assert script_main("wgan", [*argv[:-1], "--eval", "--overwrite", "--seed", "1"]) == 2  # another split than trained on
    assert "trained on" in capsys.readouterr().err


def test_scripts_report_user_errors_in_one_line(tmp_path, capsys):
    assert script_main("fid", ["--data_root_real", str(tmp_path / "nope"), "--data_root_fake", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no such file" in error[0]


def test_seed_compatible_script_runs_as_a_file():
    completed = subprocess.run([sys.executable, str(REPO / "evaluations" / "wgan_gp.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--seed", "--save_path", "--batch_size", "--img_size", "--gpu_id", "--dataset", "--data_root_real",
                 "--data_root_fake_0", "--data_root_fake_1", "--train_size", "--val_size", "--eval"):
        assert flag in completed.stdout


def test_offline_hu_window_leaves_no_error_for_values_a_windowed_model_cannot_make(tmp_path, rng, capsys):
    """Real air at -1024 HU against a perfect model of the [-1000, 1000] window: W1 > 0 raw, exactly 0 windowed."""
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    for index, volume in enumerate(_hu_set(rng, 4)):
        volume[:4] = -1024.0
        np.save(real / f"v{index}.npy", volume)
        np.save(fake / f"v{index}.npy", np.clip(volume, -1000, 1000))
    data = ["--data_root_real", str(real), "--data_root_fake", str(fake), "--bootstrap", "0"]
    _run(["evaluate", "offline", *data, "--out", str(tmp_path / "raw.json")])
    _run(["evaluate", "offline", *data, "--hu-window", "-1000", "1000", "--out", str(tmp_path / "windowed.json")])
    raw, windowed = (json.loads((tmp_path / name).read_text()) for name in ("raw.json", "windowed.json"))
    assert raw["hu_histogram"]["wasserstein_hu"] > 1.0 and raw["protocol"]["hu_window"] is None
    assert windowed["hu_histogram"]["wasserstein_hu"] == 0.0 and windowed["protocol"]["hu_window"] == [-1000.0, 1000.0]
    with pytest.raises(ConfigError, match="--hu-window"):
        _run(["evaluate", "offline", *data, "--hu-window", "1000", "-1000"])
