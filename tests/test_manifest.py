import numpy as np
import pytest

from prdit.data.manifest import ManifestRow, ok_outputs, read_manifest, write_manifest, write_split
from prdit.data.sources import find_volumes
from prdit.errors import DataError


def _row(case_id, status="ok", **kwargs):
    return ManifestRow(case_id, status, f"/src/{case_id}", output=f"volumes/{case_id}.nii.gz", **kwargs)


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.json"])
def test_rows_survive_a_round_trip(tmp_path, name):
    rows = [
        _row("b", original_shape=[133, 512, 512], original_spacing=[2.5, 0.7, 0.7], hu_min=-1024.0, hu_mean=-512.25,
             notes="dropped 1 slice(s) duplicating a position"),
        ManifestRow("a", "skipped", "/src/a", reason="gap of 7.5 mm, with, commas"),
    ]
    path = write_manifest(tmp_path / name, rows)
    back = read_manifest(path)
    assert [r.case_id for r in back] == ["a", "b"]  # sorted by case id
    assert back[1] == rows[0] and back[0] == rows[1]
    assert back[0].hu_min is None and back[0].original_shape == []


def test_malformed_or_missing_manifests_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a prdit manifest"):
        read_manifest(tmp_path / "other.csv")


def _folder_with_cases(tmp_path, count=10):
    rows = [_row(f"case{i:02d}") for i in range(count)] + [ManifestRow("bad", "skipped", "/src/bad", reason="x")]
    for row in rows[:count]:
        (tmp_path / row.output).parent.mkdir(exist_ok=True)
        (tmp_path / row.output).write_bytes(b"")
    return write_manifest(tmp_path / "manifest.csv", rows)


def test_split_is_the_seeded_permutation_of_the_sorted_ok_cases(tmp_path):
    manifest = _folder_with_cases(tmp_path)
    train_path, val_path, n_train, n_val = write_split(manifest, val=3, seed=42)
    assert (n_train, n_val) == (7, 3)
    outputs = [f"volumes/case{i:02d}.nii.gz" for i in range(10)]
    order = np.random.Generator(np.random.PCG64(42)).permutation(10)
    assert val_path.read_text().split() == sorted(outputs[i] for i in order[:3])
    assert train_path.read_text().split() == sorted(outputs[i] for i in order[3:])
    # The lists resolve relative to their folder, as the training dataset reads them.
    assert find_volumes(val_path) == [tmp_path / p for p in val_path.read_text().split()]
    assert write_split(manifest, val=3, seed=42)[3] == 3  # same split again: no error
    assert ok_outputs(manifest) == [tmp_path / p for p in outputs]  # the skipped case is left out


def test_split_refuses_to_replace_a_different_split_and_impossible_sizes(tmp_path):
    manifest = _folder_with_cases(tmp_path)
    write_split(manifest, val=3, seed=42)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_split(manifest, val=3, seed=7)
    assert write_split(manifest, val=3, seed=7, overwrite=True)[3] == 3
    with pytest.raises(DataError, match="10 ok case"):
        write_split(manifest, val=10, overwrite=True)
    with pytest.raises(DataError, match="choose 1 to 9"):
        write_split(manifest, val=0, overwrite=True)
    (tmp_path / "volumes" / "case04.nii.gz").unlink()
    with pytest.raises(DataError, match="do not exist.*case04"):
        write_split(manifest, val=3, overwrite=True)
