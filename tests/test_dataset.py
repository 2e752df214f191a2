import numpy as np
import pytest
import torch

from prdit.config import DataConfig
from prdit.data.dataset import VolumeDataset, build_datasets, mapping_from_config
from prdit.data.intensity import IntensityMapping
from prdit.errors import DataError
from prdit.io import save_nifti


def write_volumes(folder, count, size=8, spacing=(2.0, 2.0, 2.0)):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        hu = rng.uniform(-1000, 1000, (size,) * 3).astype(np.float32)
        paths.append(save_nifti(folder / f"v{i:02d}.nii.gz", hu, spacing))
    return paths


def test_items_are_model_space_and_map_back_to_hu(tmp_path):
    paths = write_volumes(tmp_path, 3)
    mapping = IntensityMapping()
    dataset = VolumeDataset(paths, mapping, image_size=8)
    item = dataset[1]
    assert item.shape == (1, 8, 8, 8) and item.dtype == torch.float32
    assert item.min() >= -1 and item.max() <= 1
    from prdit.io import load_volume

    np.testing.assert_allclose(mapping.to_hu(item[0].numpy()), load_volume(paths[1]).array, atol=1e-3)
    assert dataset.spacing == (2.0, 2.0, 2.0)


def test_pooling_doubles_spacing_and_size_mismatch_suggests_pool(tmp_path):
    paths = write_volumes(tmp_path, 1, size=16, spacing=(1.0, 1.0, 1.0))
    pooled = VolumeDataset(paths, IntensityMapping(), image_size=8, pool=2)
    assert pooled[0].shape == (1, 8, 8, 8) and pooled.spacing == (2.0, 2.0, 2.0)
    with pytest.raises(DataError, match="data.pool=2"):
        VolumeDataset(paths, IntensityMapping(), image_size=8)[0]


def test_flips_are_reproducible_per_epoch_and_index(tmp_path):
    paths = write_volumes(tmp_path, 4)
    dataset = VolumeDataset(paths, IntensityMapping(), image_size=8, flip_axes=(0, 1, 2), seed=3)
    plain = VolumeDataset(paths, IntensityMapping(), image_size=8)
    epochs = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        epochs.append(torch.stack([dataset[i] for i in range(4)]))
        again = torch.stack([dataset[i] for i in range(4)])
        assert torch.equal(epochs[-1], again)
    flipped = [not torch.equal(e, torch.stack([plain[i] for i in range(4)])) for e in epochs]
    assert any(flipped)
    for e in epochs:  # a flip only permutes voxels
        torch.testing.assert_close(e.sum(dim=(2, 3, 4)), torch.stack([plain[i] for i in range(4)]).sum(dim=(2, 3, 4)))


def test_build_datasets_from_folder_and_errors(tmp_path):
    write_volumes(tmp_path, 12)
    train, val = build_datasets(DataConfig(dataset="folder", root=str(tmp_path), image_size=8))
    assert len(train) == 11 and val is not None and len(val) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        build_datasets(DataConfig(dataset="folder", root=str(empty), image_size=8))
    with pytest.raises(DataError, match="empty"):
        VolumeDataset([], IntensityMapping())


def test_paper_mode_mapping_is_fitted_for_inversion(tmp_path):
    write_volumes(tmp_path, 12)
    train, _ = build_datasets(DataConfig(dataset="folder", root=str(tmp_path), image_size=8, intensity="paper"))
    assert train.mapping.reference_range is not None
    assert mapping_from_config(DataConfig()).mode == "hu"


def test_paper_mode_normalises_at_full_resolution_then_pools(tmp_path):
    # The official loader pools volumes that were normalised at 256^3: the percentile clip comes before the pooling.
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1100, 1200, (8, 8, 8)).astype(np.float32)
    hu[0, 0, 0] = 3000.0  # one bright voxel: pooling first would lower it below the percentile
    path = save_nifti(tmp_path / "v.nii.gz", hu, (1.0, 1.0, 1.0))
    floored = np.maximum(hu.astype(np.float64), -1000)
    top = np.percentile(floored, 99.9)
    unit = (np.clip(floored, floored.min(), top) - floored.min()) / (top - floored.min())
    expected = 2 * unit.reshape(4, 2, 4, 2, 4, 2).mean(axis=(1, 3, 5)) - 1
    dataset = VolumeDataset([path], IntensityMapping(mode="paper"), image_size=4, pool=2)
    np.testing.assert_allclose(dataset[0][0].numpy(), expected, atol=1e-6)
