"""Sampling with a condition: a conditional run trains and samples with a mask, attributes and guidance; the
sidecar records the condition; every bad request (grid, label, attribute, unconditional model) is one line."""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from prdit.cli import main
from prdit.conditioning import build_condition, parse_attributes
from prdit.config import config_from_dict
from prdit.data.conditions import PHANTOM_LABELS
from prdit.data.phantom import generate_phantom, phantom_label_map
from prdit.errors import ConfigError, DataError, PrditError
from prdit.io import save_nifti
from prdit.sample import load_pipeline, pretrained_weights, sample_to_folder
from prdit.train.trainer import TrainOptions, train

SPEC = {"labels": {"body": 1, "lung": 2}, "attributes": ["body_diameter_mm"]}
GRID = (16, 16, 16)
SPACING = (2.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def labelled_blobs(tmp_path_factory):
    """Ten 16^3 blobs with their label maps (body = the blob) and labels.json."""
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1)
    for i in range(10):
        inside = np.linalg.norm(grid - rng.uniform(6, 10, 3), axis=-1) < rng.uniform(3, 6)
        volume = np.where(inside, 40.0, -1000.0) + gaussian_filter(rng.normal(0, 30, (16, 16, 16)), 1)
        save_nifti(folder / f"blob_{i:02d}.nii.gz", volume.astype(np.float32), SPACING)
        save_nifti(folder / "labels" / f"blob_{i:02d}.nii.gz", inside.astype(np.uint8), SPACING, dtype=np.uint8)
    (folder / "labels.json").write_text(json.dumps({"body": 1}))
    return folder


def conditional_config(data, results, **model):
    return config_from_dict({
        "data": {"dataset": "folder", "root": str(data), "image_size": 16},
        "model": {"name": "PRDiT-T/6/0", "stride": 4, "condition": {"labels": ["body"], "attributes": ["body_diameter_mm"]}, **model},
        "training": {"global_batch_size": 2, "lr": 3e-3, "total_steps": 4, "seed": 1},
        "output": {"results_dir": str(results)},
        "logging": {"log_every": 1, "ckpt_every": 4, "eval_every": 4, "num_preview_samples": 0},
    }, "test config")


@pytest.fixture(scope="module")
def pipeline(labelled_blobs, tmp_path_factory):
    run = train(conditional_config(labelled_blobs, tmp_path_factory.mktemp("results")), TrainOptions(progress=False))
    return load_pipeline(run, device="cpu")


def test_a_conditional_run_records_its_condition_and_samples_with_a_mask(pipeline, labelled_blobs, tmp_path):
    assert pipeline.condition_spec == {"labels": {"body": 1}, "attributes": ["body_diameter_mm"], "dropout": 0.1}
    mask = labelled_blobs / "labels" / "blob_00.nii.gz"
    condition = pipeline.condition(mask, {"body_diameter_mm": 20.0}, guidance_scale=2.0)
    written = sample_to_folder(pipeline, tmp_path, 2, batch_size=2, steps=2, progress=False, condition=condition)
    sidecar = json.loads(written[0].with_name("sample_000000.json").read_text())
    assert sidecar["condition"]["mask"] == str(mask) and sidecar["condition"]["guidance_scale"] == 2.0
    assert sidecar["condition"]["attributes"] == {"body_diameter_mm": 20.0}
    assert len(sidecar["condition_sha256"]) == 64
    # another condition into the same folder is refused: one folder, one condition
    other = pipeline.condition(mask, {"body_diameter_mm": 25.0}, guidance_scale=2.0)
    with pytest.raises(PrditError, match="condition_sha256"):
        sample_to_folder(pipeline, tmp_path, 3, steps=2, progress=False, condition=other)


def test_guidance_one_is_the_conditional_model_and_a_seed_gives_the_same_volume(pipeline, labelled_blobs):
    mask = labelled_blobs / "labels" / "blob_01.nii.gz"
    a = pipeline.sample(1, steps=2, seed=3, mask=mask, guidance_scale=1.0, progress=False)
    b = pipeline.sample(1, steps=2, seed=3, mask=mask, progress=False)  # the default guidance scale
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_the_command_line_samples_with_a_mask_and_refuses_bad_requests(pipeline, labelled_blobs, tmp_path, capsys):
    ckpt = str(pipeline.checkpoint)
    mask = str(labelled_blobs / "labels" / "blob_02.nii.gz")
    main(["sample", "--ckpt", ckpt, "--mask", mask, "--attribute", "body_diameter_mm=18", "--guidance-scale", "1.5",
          "--steps", "2", "--num-volumes", "1", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert (tmp_path / "out" / "sample_000000.nii.gz").is_file()
    for extra, message in ((["--attribute", "height_cm=180"], "unknown attribute 'height_cm'"),
                           (["--attribute", "body_diameter_mm"], "NAME=NUMBER")):
        assert main(["sample", "--ckpt", ckpt, *extra, "--steps", "1", "--output-dir", str(tmp_path / "bad")]) != 0
        assert message in capsys.readouterr().err


def test_a_mask_on_another_grid_or_with_unseen_labels_is_a_one_line_error(tmp_path):
    with pytest.raises(PrditError, match=r"mask is \(8, 8, 8\) voxels.*resample the mask with nearest neighbour"):
        build_condition(SPEC, GRID, SPACING, np.zeros((8, 8, 8), np.uint8))
    save_nifti(tmp_path / "coarse.nii.gz", np.ones(GRID, np.uint8), (4.0, 4.0, 4.0), dtype=np.uint8)
    with pytest.raises(PrditError, match="spacing"):
        build_condition(SPEC, GRID, SPACING, tmp_path / "coarse.nii.gz")
    with pytest.raises(PrditError, match="label value 9 is not one the model was trained on"):
        build_condition(SPEC, GRID, SPACING, np.full(GRID, 9, np.uint8))
    folder = tmp_path / "named"
    folder.mkdir()
    mask = np.zeros(GRID, np.uint8)
    mask[4:12, 4:12, 4:12], mask[6:8, 6:8, 6:8] = 5, 7
    save_nifti(folder / "m.nii.gz", mask, SPACING, dtype=np.uint8)
    (folder / "labels.json").write_text(json.dumps({"body": 5, "liver": 7}))
    with pytest.raises(PrditError, match="label 'liver' is not one the model was trained on"):
        build_condition(SPEC, GRID, SPACING, folder / "m.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"body": 5, "lung": 7}))  # named labels are matched by name
    remapped = build_condition(SPEC, GRID, SPACING, folder / "m.nii.gz").mask
    assert remapped[5, 5, 5] == 1 and remapped[6, 6, 6] == 2 and remapped[0, 0, 0] == 0


def test_requests_a_model_cannot_take_are_refused():
    with pytest.raises(PrditError, match="is unconditional"):
        build_condition(None, GRID, SPACING, np.zeros(GRID, np.uint8))
    with pytest.raises(PrditError, match="trained without label maps"):
        build_condition({"attributes": ["body_diameter_mm"]}, GRID, SPACING, np.zeros(GRID, np.uint8))
    with pytest.raises(PrditError, match="needs a condition"):
        build_condition(SPEC, GRID, SPACING, guidance_scale=2.0)
    with pytest.raises(PrditError, match=">= 0"):
        build_condition(SPEC, GRID, SPACING, attributes={"body_diameter_mm": 300}, guidance_scale=-1)
    assert build_condition(SPEC, GRID, SPACING) is None
    assert parse_attributes(["body_diameter_mm=320", "mean_lung_hu=-850"]) == {"body_diameter_mm": 320.0, "mean_lung_hu": -850.0}


def test_unknown_condition_names_in_a_config_are_errors(labelled_blobs, tmp_path):
    with pytest.raises(DataError, match="model.condition.attributes: unknown attribute 'height'"):
        train(conditional_config(labelled_blobs, tmp_path, condition={"attributes": ["height"]}), TrainOptions(progress=False))
    with pytest.raises(ConfigError, match="distinct"):
        conditional_config(labelled_blobs, tmp_path, condition={"labels": ["body", "body"]})
    config = conditional_config(labelled_blobs, tmp_path, condition={"labels": ["lung"]})
    with pytest.raises(DataError, match="'lung', which .* does not define"):
        train(config, TrainOptions(progress=False))


def test_the_shipped_conditional_model_is_found_by_name_and_checks_its_masks():
    assert pretrained_weights("phantom").name == "phantom-32.safetensors"
    with pytest.raises(PrditError, match="unknown pretrained model"):
        pretrained_weights("phantom-xl")
    shipped = load_pipeline(pretrained_weights("phantom-mask"), device="cpu")
    assert shipped.condition_spec["labels"] == PHANTOM_LABELS and shipped.model.label_channels == len(PHANTOM_LABELS)
    assert shipped.condition_spec["attributes"] == ["body_diameter_mm", "mean_lung_hu"]
    _, _, tissues = generate_phantom(64, 50000, return_labels=True)
    with pytest.raises(PrditError, match=r"mask is \(64, 64, 64\) voxels, PRDiT-T/6/4 generates \(32, 32, 32\)"):
        shipped.condition(phantom_label_map(tissues))
    assert shipped.condition(phantom_label_map(generate_phantom(32, 50000, return_labels=True)[2])) is not None


def test_restore_combines_a_label_map_with_a_measurement(pipeline, labelled_blobs):
    from prdit.inverse.operators import SuperResolution

    op = SuperResolution(2)
    truth = torch.full((1, 1, 16, 16, 16), -1000.0)
    y = op(truth)
    mask = labelled_blobs / "labels" / "blob_03.nii.gz"
    restored = pipeline.restore(y, op, steps=2, mask=mask, guidance_scale=2.0)
    assert restored.shape == (1, 1, 16, 16, 16) and torch.isfinite(restored).all()
    # the measurement still holds: the restored volume's downsampled mean matches it to within a few HU
    assert (op(restored) - y).abs().mean() < 50
    with pytest.raises(PrditError, match="unknown attribute"):
        pipeline.restore(y, op, steps=2, attributes={"height": 1.0})
