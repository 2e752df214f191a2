"""Model cards: Hugging Face front matter, facts read from the weights file itself, metrics in words, limitations."""

import json

import pytest
import yaml
from safetensors import safe_open

from prdit.cli import main
from prdit.config import load_config
from prdit.demo import CONFIG_DIR, SHIPPED_WEIGHTS
from prdit.io import sha256_file
from prdit.modelcard import model_card, read_metrics
from prdit.sample import load_pipeline


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_of_the_shipped_model_states_what_it_is_and_is_not(tmp_path):
    metrics = {"metrics": {"samples": {"offline": {"hu_histogram": {"wasserstein_hu": 39.9}}, "protocol": {"n_real": 20, "n_fake": 8}}},
               "floor": {"offline": {"hu_histogram": {"wasserstein_hu": 4.0}}}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    config = load_config(CONFIG_DIR / "global.yaml").to_dict()
    card = model_card(SHIPPED_WEIGHTS, metrics=tmp_path / "m.json", config=config)
    front = front_matter(card)
    assert front["license"] == "apache-2.0" and {"medical-imaging", "ct", "diffusion", "3d"} <= set(front["tags"])
    shipped = load_pipeline(SHIPPED_WEIGHTS)
    assert sha256_file(SHIPPED_WEIGHTS) in card and shipped.model.name in card
    with safe_open(SHIPPED_WEIGHTS, "pt") as weights:
        trained_steps = weights.metadata()["step"]
    low, high = shipped.mapping.window
    assert "32³ voxels at 11.25 × 11.25 × 11.25 mm" in card and f"HU clipped to [{low:g}, {high:g}]" in card
    assert "procedural chest-CT phantoms" in card and f"**Training**: {trained_steps} steps" in card
    assert "| HU histogram distance (Wasserstein-1) (HU) | ↓ | 39.9 | 4.00 |" in card
    assert "Not for diagnosis" in card and "synthetic phantoms" in card
    assert "8 generated vs 20 real volumes" in card


def test_read_metrics_accepts_an_evaluation_and_a_demo_file(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"fid": 1.0, "protocol": {}}))
    assert read_metrics(tmp_path / "one.json") == ({"samples": {"fid": 1.0, "protocol": {}}}, None)
    (tmp_path / "demo.json").write_text(json.dumps({"metrics": {"a": {"fid": 2.0}}, "floor": {"fid": 0.1}}))
    assert read_metrics(tmp_path / "demo.json") == ({"a": {"fid": 2.0}}, {"fid": 0.1})


def test_export_writes_weights_and_card_from_a_run_and_never_overwrites(tiny_run, tmp_path, capsys):
    out = tmp_path / "share" / "tiny.safetensors"
    assert main(["export", str(tiny_run["run"]), "--out", str(out)]) == 0
    card = (tmp_path / "share" / "README.md").read_text()
    assert front_matter(card)["library_name"] == "prdit"
    assert "PRDiT-T/6/0" in card and "stage 1: local denoiser only" in card and "8 steps, global batch 2" in card
    assert "a folder of CT volumes in HU" in card  # the training config travelled inside the exported file
    assert sha256_file(out) in card
    capsys.readouterr()
    assert main(["export", str(tiny_run["run"]), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tiny_run["run"])]) == 2  # neither --out nor --bundle


@pytest.mark.parametrize("flag", ["--no-card"])
def test_no_card_writes_only_the_weights(tiny_run, tmp_path, flag):
    assert main(["export", str(tiny_run["run"]), "--out", str(tmp_path / "w.safetensors"), flag]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
