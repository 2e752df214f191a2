"""Label maps and attributes: phantoms write label maps on their own grid that agree with their HU, and the
attributes measure what they say."""

import json

import numpy as np
import pytest

from prdit.cli import main
from prdit.data.conditions import PHANTOM_LABELS, effective_diameter_mm, measure_attributes, read_label_names
from prdit.data.phantom import generate_phantom, phantom_label_map
from prdit.errors import DataError
from prdit.io import load_volume


def test_phantom_labels_are_written_on_the_volume_grid_and_named(tmp_path):
    assert main(["data", "phantom", "--num", "2", "--size", "32", "--labels", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "labels.json").read_text()) == PHANTOM_LABELS
    volume, labels = load_volume(tmp_path / "phantom_00000.nii.gz"), load_volume(tmp_path / "labels" / "phantom_00000.nii.gz")
    np.testing.assert_array_equal(volume.affine, labels.affine)
    assert labels.array.shape == volume.array.shape and set(np.unique(labels.array)) <= {0, *PHANTOM_LABELS.values()}
    # the label map describes the volume: lungs are air-like, bone dense, outside the body air or table
    hu, lab = volume.array, labels.array
    assert np.median(hu[lab == PHANTOM_LABELS["lung"]]) < -600 and np.median(hu[lab == PHANTOM_LABELS["bone"]]) > 200
    assert np.median(hu[lab == PHANTOM_LABELS["body"]]) > -100
    assert read_label_names(tmp_path / "labels") == PHANTOM_LABELS
    # the volumes are the ones written without --labels
    plain = tmp_path / "plain"
    main(["data", "phantom", "--num", "1", "--size", "32", "--out", str(plain)])
    np.testing.assert_array_equal(load_volume(plain / "phantom_00000.nii.gz").array, hu)
    assert not (plain / "labels").exists()


def test_every_phantom_tissue_inside_the_body_has_a_label():
    _, _, tissues = generate_phantom(32, 3, return_labels=True)
    from prdit.data.phantom import TISSUE_LABELS

    outside = np.isin(tissues, [TISSUE_LABELS[t] for t in ("air", "table_shell", "table_foam")])
    np.testing.assert_array_equal(phantom_label_map(tissues) > 0, ~outside)


def test_the_effective_diameter_of_a_cylinder_is_its_diameter():
    grid = np.stack(np.meshgrid(np.arange(64), np.arange(64), indexing="ij"), -1)
    disc = np.linalg.norm(grid - 31.5, axis=-1) < 20.0
    body = np.broadcast_to(disc, (8, 64, 64))
    assert effective_diameter_mm(body, (1.0, 0.5, 0.5)) == pytest.approx(20.0, rel=0.01)
    hu = np.where(body, -850.0, 0.0)
    values = measure_attributes(["body_diameter_mm", "mean_lung_hu"], hu, body.astype(np.uint8) * 2, {"lung": 2}, (1, 0.5, 0.5))
    assert values[0] == pytest.approx(20.0, rel=0.01) and values[1] == -850.0
    with pytest.raises(DataError, match="unknown attribute 'height'"):
        measure_attributes(["height"], hu, body, {}, (1, 1, 1))


def test_a_label_folder_without_names_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no labels.json"):
        read_label_names(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"lung": 300}))
    with pytest.raises(DataError, match="integers 1-255"):
        read_label_names(tmp_path)


def test_imported_scans_with_label_files_give_conditional_training_batches(tmp_path):
    """Real-data route end to end: scans + multilabel files with a tool's own ids -> ``prdit data import --labels
    --label-map`` -> a conditional training batch whose label channels are the maps, voxel for voxel."""
    from torch.utils.data import DataLoader

    from prdit.config import config_from_dict
    from prdit.data.dataset import build_datasets
    from prdit.data.phantom import phantom_label_map
    from prdit.io import save_nifti

    truth = {}
    for seed in range(3):  # phantoms stand in for scans; their label maps, under ids 101-107, for a segmenter's output
        hu, spacing, tissues = generate_phantom(32, seed, return_labels=True)
        save_nifti(tmp_path / "src" / f"case{seed}.nii.gz", hu, spacing, dtype=np.int16)
        truth[f"case{seed}"] = phantom_label_map(tissues)
        save_nifti(tmp_path / "seg" / f"case{seed}.nii.gz", np.where(truth[f"case{seed}"] > 0, truth[f"case{seed}"] + 100, 0),
                   spacing, dtype=np.uint8)
    (tmp_path / "map.json").write_text(json.dumps({name: [value + 100] for name, value in PHANTOM_LABELS.items()}))
    assert main(["data", "import", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "32",
                 "--spacing", str(spacing[0]), "--crop", "center", "--no-progress", "--labels", str(tmp_path / "seg"),
                 "--label-map", str(tmp_path / "map.json")]) == 0
    for case, labels in truth.items():  # the same grid: nearest neighbour gives the map back exactly
        np.testing.assert_array_equal(load_volume(tmp_path / "out" / "labels" / f"{case}.nii.gz").array, labels)

    config = config_from_dict({
        "data": {"dataset": "folder", "root": str(tmp_path / "out"), "image_size": 32},
        "model": {"name": "PRDiT-T/6/0", "condition": {"labels": ["body", "lung", "bone"], "attributes": ["body_diameter_mm"]}},
    }, "test config")
    train, _ = build_datasets(config.data, condition=config.model.condition)
    batch = next(iter(DataLoader(train, batch_size=2)))
    assert batch["x0"].shape == batch["labels"].shape == (2, 1, 32, 32, 32) and batch["attributes"].shape == (2, 1)
    for i in range(2):
        case = train.paths[i].name.removesuffix(".nii.gz")
        np.testing.assert_array_equal(batch["labels"][i, 0].numpy(), truth[case])
        diameter = effective_diameter_mm(truth[case] > 0, spacing)
        assert batch["attributes"][i, 0].item() == pytest.approx((diameter - 300.0) / 30.0, abs=1e-5)
