"""MONAI bundle export, run end to end by MONAI's own runner on the shipped model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prdit.bundle import inference_config, write_bundle
from prdit.checkpoint import CheckpointMeta, load_exported
from prdit.cli import main
from prdit.demo import SHIPPED_WEIGHTS
from prdit.io import load_volume
from prdit.sample import load_pipeline, sample_to_folder

ROOT = Path(__file__).resolve().parents[1]


def test_inference_config_builds_prdit_objects_by_target():
    meta = CheckpointMeta.from_dict(load_exported(SHIPPED_WEIGHTS)["meta"], SHIPPED_WEIGHTS)
    config = inference_config(meta)
    assert config["network_def"]["_target_"] == "prdit.models.create_model" and config["network_def"]["name"] == meta.model_name
    assert config["diffusion"]["_target_"] == "prdit.diffusion.create_diffusion"
    assert config["pipeline"]["_target_"] == "prdit.sample.Pipeline"
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    parser["bundle_root"] = str(SHIPPED_WEIGHTS.parent)
    parser["weights_file"] = str(SHIPPED_WEIGHTS)
    parser["device"] = "cpu"
    pipeline = parser.get_parsed_content("pipeline")
    reference = load_pipeline(SHIPPED_WEIGHTS, device="cpu")
    assert pipeline.model.name == reference.model.name and pipeline.spacing == reference.spacing
    for key, tensor in reference.model.state_dict().items():
        assert (pipeline.model.state_dict()[key] == tensor).all(), key


def test_monai_bundle_run_samples_the_same_volume_as_prdit(tmp_path):
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire: pip install -e '.[bundle]'")
    bundle = tmp_path / "bundle"
    assert main(["export", str(SHIPPED_WEIGHTS), "--bundle", str(bundle)]) == 0
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.safetensors", "docs/README.md"):
        assert (bundle / name).is_file(), name
    assert json.loads((bundle / "configs/metadata.json").read_text())["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [32, 32, 32]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--num_volumes", "1", "--steps", "2", "--seed", "3", "--device", "cpu"]
    result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    produced = load_volume(bundle / "eval" / "sample_000003.nii.gz")
    reference = load_pipeline(SHIPPED_WEIGHTS, device="cpu")
    sample_to_folder(reference, tmp_path / "prdit", 1, seed=3, steps=2, progress=False)
    expected = load_volume(tmp_path / "prdit" / "sample_000003.nii.gz")
    assert produced.array.shape == (32, 32, 32) and produced.spacing == expected.spacing
    np.testing.assert_array_equal(produced.array, expected.array)
    sidecar = json.loads((bundle / "eval" / "sample_000003.json").read_text())
    assert sidecar["steps"] == 2 and sidecar["model"] == reference.model.name


def test_bundle_folder_is_never_overwritten(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_bundle(SHIPPED_WEIGHTS, tmp_path / "b")
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"
