import numpy as np
import pytest
from test_dataset import write_volumes

from prdit.config import DataConfig
from prdit.data.manifest import split_paths
from prdit.data.sources import find_volumes, resolve_splits
from prdit.errors import DataError


def test_find_volumes_in_folders_and_lists(tmp_path):
    for name in ("b.nii.gz", "a.npy", "sub/c.npz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".tmp-1234-d.nii.gz").write_bytes(b"")
    found = find_volumes(tmp_path)
    assert [p.name for p in found] == ["a.npy", "b.nii.gz", "c.npz"]
    listing = tmp_path / "train.txt"
    listing.write_text("b.nii.gz\n# a comment\nsub/c.npz\n")
    assert [p.name for p in find_volumes(listing)] == ["b.nii.gz", "c.npz"]
    listing.write_text("missing.nii.gz\n")
    with pytest.raises(DataError, match="do not exist"):
        find_volumes(listing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        find_volumes(empty)
    with pytest.raises(DataError, match="no such"):
        find_volumes(tmp_path / "absent")


def test_find_volumes_reads_the_ok_cases_of_a_manifest(tmp_path):
    from prdit.data.manifest import ManifestRow, write_manifest

    (tmp_path / "volumes").mkdir()
    for name in ("a", "b"):
        np.save(tmp_path / "volumes" / f"{name}.npy", np.zeros((4, 4, 4), np.float32))
    rows = [
        ManifestRow(case_id="a", status="ok", source="/src/a", output="volumes/a.npy"),
        ManifestRow(case_id="b", status="skipped", source="/src/b", reason="gantry tilt"),
        ManifestRow(case_id="c", status="ok", source="/src/c", output="volumes/b.npy"),
    ]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    assert find_volumes(manifest) == [tmp_path / "volumes" / "a.npy", tmp_path / "volumes" / "b.npy"]


def test_split_is_deterministic_and_disjoint(tmp_path):
    paths = [tmp_path / f"{i}.nii.gz" for i in range(30)]
    train, val = split_paths(paths, 5, seed=42)
    assert len(val) == 5 and not set(train) & set(val) and set(train) | set(val) == set(paths)
    assert split_paths(paths, 5, seed=42) == (train, val)
    assert split_paths(paths, 5, seed=1)[1] != val


def test_resolve_splits_prefers_list_files(tmp_path):
    write_volumes(tmp_path, 4)
    (tmp_path / "train.txt").write_text("v00.nii.gz\nv01.nii.gz\nv02.nii.gz\n")
    (tmp_path / "val.txt").write_text("v03.nii.gz\n")
    train, val = resolve_splits(DataConfig(root=str(tmp_path)))
    assert [p.name for p in train] == ["v00.nii.gz", "v01.nii.gz", "v02.nii.gz"]
    assert [p.name for p in val] == ["v03.nii.gz"]
