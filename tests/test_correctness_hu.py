"""Issue 31, items 4 and 5: one set of HU conventions, the model's own mapping wherever model space is read, and
clipping before pooling in both intensity modes."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prdit.config import DataConfig
from prdit.data.dataset import VolumeDataset
from prdit.data.intensity import IntensityMapping
from prdit.errors import DataError
from prdit.io import load_volume, save_nifti

PACKAGE = Path(__file__).resolve().parents[1] / "prdit"
SHIPPED = PACKAGE / "assets" / "phantom-32.safetensors"
WIDE = IntensityMapping(mode="hu", window=(-1000.0, 2000.0))

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------
# Item 4: one HU convention, and the model's mapping read from its checkpoint or sidecar
# ----------------------------------------------------------------------------------------------------------


def _normalised(value):
    return tuple(_normalised(v) for v in value) if isinstance(value, (tuple, list)) else float(value)


def _module_constants(path: Path) -> dict[str, object]:
    """Module-level UPPER_CASE names bound to a number or a tuple of numbers."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    try:
                        found[target.id] = _normalised(ast.literal_eval(node.value))
                    except (ValueError, TypeError, SyntaxError):
                        pass
    return found


def test_hu_constants_are_defined_in_one_module_only():
    """No module but prdit/hu.py binds one of its HU conventions (air, body threshold, windows, ceilings) again."""
    conventions = {value for value in _module_constants(PACKAGE / "hu.py").values()}
    assert {-1000.0, -500.0, (-1000.0, 2000.0)} <= conventions
    strays = {f"{path.relative_to(PACKAGE)}:{name}" for path in PACKAGE.rglob("*.py") if path.name != "hu.py"
              for name, value in _module_constants(path).items() if value in conventions and ("HU" in name or "WINDOW" in name)}
    assert not strays, sorted(strays)
    names = set(_module_constants(PACKAGE / "hu.py"))
    through = {f"{path.relative_to(PACKAGE.parent)}: {node.module}.{alias.name}"
               for path in [*PACKAGE.rglob("*.py"), *PACKAGE.parent.glob("tests/*.py"), *PACKAGE.parent.glob("benchmarks/*.py")]
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom) and node.module != "prdit.hu"
               for alias in node.names if alias.name in names}
    assert not through, sorted(through)  # imported from prdit.hu itself, not re-exported by another module


def test_the_mapping_default_is_the_training_default():
    assert IntensityMapping().window == DataConfig().hu_window


def test_tissue_bands_agree_between_evaluation_and_restoration():
    """Every HU value falls into the same tissue band for the offline metrics, the anatomy metrics and the restore
    metrics (bone began at 150 HU in one table and at 300 HU in another)."""
    from prdit.evaluation.anatomy import volume_features
    from prdit.evaluation.offline import tissue_fractions
    from prdit.inverse.metrics import tissue_errors

    for hu in (-700.0, -100.0, 100.0, 250.0, 600.0):
        truth = torch.full((1, 1, 8, 8, 8), hu)
        restored = set(tissue_errors(truth + 5.0, truth))
        offline = {name for name, fraction in tissue_fractions(truth[:, 0].numpy()).items() if fraction[0] == 1.0}
        anatomy = {name for name in offline if volume_features(truth[0, 0].numpy())[f"middle_{name}_fraction"] == 1.0}
        assert restored == offline == anatomy, hu


@pytest.fixture(scope="module")
def shipped_samples(tmp_path_factory):
    """One volume of the shipped model (trained with the [-1000, 2000] HU window) with its --save-raw file."""
    from prdit.sample import load_pipeline, sample_to_folder

    folder = tmp_path_factory.mktemp("shipped")
    pipeline = load_pipeline(SHIPPED, device="cpu")
    assert pipeline.mapping.window == (-1000.0, 2000.0)
    sample_to_folder(pipeline, folder, 1, steps=2, progress=False, save_raw=True, grid=False)
    return folder


def test_save_raw_files_read_back_in_hu_through_their_sidecar(shipped_samples):
    from prdit.evaluation.data import load_volume_set

    raw = shipped_samples / "sample_000000_raw.nii.gz"
    hu = load_volume(shipped_samples / "sample_000000.nii.gz").array
    read = load_volume_set([raw], space="model").volumes[0]
    np.testing.assert_allclose(read, hu, atol=0.51)  # the HU file is int16
    assert load_volume_set([raw], space="model", mapping=WIDE).volumes[0].max() == pytest.approx(read.max())


def test_model_space_without_a_mapping_is_an_error_not_a_guess(tmp_path):
    from prdit.evaluation.data import load_volume_set

    save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), dtype=np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="--intensity-from"):
        load_volume_set([tmp_path / "x.nii.gz"], space="model")


def test_evaluate_space_model_reads_the_window_from_the_sidecars(shipped_samples, tmp_path, capsys):
    from prdit.cli import main

    raw = tmp_path / "raw.txt"
    raw.write_text(str(shipped_samples / "sample_000000_raw.nii.gz") + "\n")
    out = tmp_path / "offline.json"
    args = ["evaluate", "offline", "--data_root_real", str(raw), "--data_root_fake", str(raw), "--space", "model",
            "--bootstrap", "0", "--out", str(out)]
    assert main(args) == 0
    assert "HU window [-1000, 2000]" in json.loads(out.read_text())["protocol"]["input_space"]
    (tmp_path / "x.nii.gz").symlink_to(shipped_samples / "sample_000000_raw.nii.gz")  # no sidecar beside it
    args = ["evaluate", "offline", "--data_root_real", str(raw), "--data_root_fake", str(tmp_path / "x.nii.gz"),
            "--space", "model", "--bootstrap", "0", "--out", str(tmp_path / "again.json")]
    assert main(args) == 2
    assert "--intensity-from" in capsys.readouterr().err
    assert main(args + ["--intensity-from", str(SHIPPED)]) == 0
    assert "HU window [-1000, 2000]" in json.loads((tmp_path / "again.json").read_text())["protocol"]["input_space"]


def test_memorisation_distances_use_the_models_window():
    """Two volumes that differ only in bone between 1000 and 2000 HU are apart for a [-1000, 2000] model."""
    from prdit.evaluation.memorisation import nearest_neighbours

    a = np.zeros((1, 4, 4, 4))
    b = a.copy()
    b[0, 0] = 1500.0
    distance, _ = nearest_neighbours(a + 1500.0, b + 0.0, window=WIDE.hu_range())
    assert distance[0] > 0
    distance, _ = nearest_neighbours(np.full_like(a, 1500.0), np.full_like(a, 1200.0), window=WIDE.hu_range())
    assert distance[0] == pytest.approx(300.0)


def test_restore_metrics_use_the_models_window():
    """PSNR over the model's window: an error in bone between 1000 and 2000 HU counts."""
    from prdit.inverse.metrics import reconstruction_metrics
    from prdit.inverse.operators import SuperResolution

    truth = torch.full((1, 1, 8, 8, 8), 1500.0)
    op = SuperResolution(2)
    metrics = reconstruction_metrics(op, truth - 300.0, truth, op(truth), window=WIDE.hu_range())
    assert metrics["psnr"] == pytest.approx(10 * math.log10(3000.0**2 / 300.0**2))
    assert metrics["window_hu"] == [-1000.0, 2000.0]


def test_restore_records_metrics_over_the_shipped_models_window(tmp_path):
    from prdit.cli import main
    from prdit.data.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "truth", num=1, size=32, seed=10_001)
    truth = tmp_path / "truth" / "phantom_10001.nii.gz"
    assert main(["restore", "super-resolution", "--simulate", str(truth), "--out", str(tmp_path / "out"), "--steps", "2",
                 "--no-progress", "--device", "cpu"]) == 0
    sidecar = json.loads((tmp_path / "out" / "restored.json").read_text())
    assert sidecar["metrics"]["restored"]["window_hu"] == [-1000.0, 2000.0]


# ----------------------------------------------------------------------------------------------------------
# Item 5: clip first, then pool; one paper min-max
# ----------------------------------------------------------------------------------------------------------


def test_hu_mode_clips_before_pooling(tmp_path):
    """Out-of-field -3024 HU and 3000 HU bone must not drag a pooled border voxel past what the window allows."""
    hu = np.zeros((4, 4, 4), dtype=np.float32)
    hu[:, :, 0] = -3024.0  # outside the scanner's field of view
    hu[:, :, 3] = 3000.0  # bright bone
    path = save_nifti(tmp_path / "v.nii.gz", hu, (1.0, 1.0, 1.0))
    pooled = VolumeDataset([path], WIDE, image_size=2, pool=2)[0][0].numpy()
    clipped = np.clip(hu, -1000.0, 2000.0)
    expected = WIDE.to_model(clipped.reshape(2, 2, 2, 2, 2, 2).mean(axis=(1, 3, 5)))
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    assert WIDE.to_hu(pooled[0, 0, 0]) == pytest.approx(-500.0, abs=1e-3)  # (-1000 + 0) / 2, not (-3024 + 0) / 2
    assert WIDE.to_hu(pooled[0, 0, 1]) == pytest.approx(1000.0, abs=1e-3)  # (0 + 2000) / 2, not (0 + 3000) / 2


def test_preprocessing_and_training_share_one_paper_min_max(tmp_path):
    """``prdit data rad --normalize paper`` writes exactly what the paper mapping (with the 1000 HU ceiling) makes."""
    from prdit.data.manifest import ManifestRow
    from prdit.data.preprocess import PreprocessOptions, _finish

    rng = np.random.default_rng(0)
    cube = rng.uniform(-1100.0, 1800.0, (8, 8, 8)).astype(np.float32)
    options = PreprocessOptions(size=8, normalize="paper", percentile=99.5, hu_ceiling=1000.0)
    _finish(cube, 1.0, np.zeros(3), options, tmp_path / "v.nii.gz", ManifestRow("v", "skipped", "src"))
    written = load_volume(tmp_path / "v.nii.gz").array
    mapping = IntensityMapping(mode="paper", percentile=99.5, ceiling=1000.0)
    np.testing.assert_array_equal(written, mapping.to_unit(cube).astype(np.float32))
    assert written.max() == 1.0 and written.min() == 0.0
