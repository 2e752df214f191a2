import os

from prdit.cli.common import set_openmp_waiting

# Before torch loads OpenMP, as the prdit command does: waiting threads spin briefly, then sleep, instead of spinning
# for milliseconds on the cores other test processes need (``import prdit`` leaves the environment alone).
set_openmp_waiting()

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests are sized for 2 CPU cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs the cuda-marked tests on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded: small convolutions gain little from threads, and OpenMP spin-waiting makes them several
    times slower when other processes share the CPU (modules opt in with ``pytestmark``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real, tiny run: 6 phantoms (32^3) -> 8 training steps of PRDiT-T/6/0 -> 2 volumes sampled in 2 steps.

    Returns the folders ``{"data", "run", "samples"}`` (reports, exports and bundles are made from it)."""
    import numpy as np

    from prdit.config import config_from_dict
    from prdit.data.phantom import generate_phantom
    from prdit.io import save_nifti
    from prdit.sample import load_pipeline, sample_to_folder
    from prdit.train.trainer import TrainOptions, train

    root = tmp_path_factory.mktemp("tiny_run")
    for seed in range(6):
        volume, spacing = generate_phantom(32, seed=seed)
        save_nifti(root / "data" / f"phantom_{seed:03d}.nii.gz", volume, spacing, dtype=np.int16)
    config = config_from_dict({
        "data": {"dataset": "folder", "root": str(root / "data"), "image_size": 32},
        "model": {"name": "PRDiT-T/6/0", "stride": 4},
        "training": {"global_batch_size": 2, "total_steps": 8, "seed": 0, "device": "cpu"},
        "output": {"results_dir": str(root / "results")},
        "logging": {"log_every": 1, "ckpt_every": 8, "eval_every": 4, "num_preview_samples": 0},
    }, "tiny run config")
    run = train(config, TrainOptions(progress=False))
    sample_to_folder(load_pipeline(run, device="cpu"), root / "samples", 2, batch_size=2, steps=2, progress=False)
    return {"data": root / "data", "run": run, "samples": root / "samples"}
