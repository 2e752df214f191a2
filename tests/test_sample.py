"""Sampling: a volume depends only on its seed; NIfTI outputs carry HU, spacing and a real affine; reruns resume;
bad checkpoints and folders give one clear error."""

import numpy as np
import pytest
import torch
from test_trainer import blob_data, make_config  # noqa: F401  (fixture re-used)

from prdit.checkpoint import export_weights, load_checkpoint, save_checkpoint
from prdit.cli import main
from prdit.errors import CheckpointError, PrditError
from prdit.io import load_volume
from prdit.sample import load_pipeline, sample_to_folder
from prdit.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def run_dir(blob_data, tmp_path_factory):  # noqa: F811
    """A briefly trained stage-2 model: non-trivial weights in both parts, so samples depend on everything."""
    results = tmp_path_factory.mktemp("results")
    stage1 = train(make_config(blob_data, results, total_steps=6), TrainOptions(progress=False))
    config = make_config(blob_data, results, model="PRDiT-T/6/1", total_steps=6)
    return train(config.with_pretrained(stage1), TrainOptions(progress=False))


@pytest.fixture(scope="module")
def pipeline(run_dir):
    """At fp32: bit for bit whatever the batch (bf16, auto on CPUs with native bf16, agrees to about 1 HU)."""
    return load_pipeline(run_dir, device="cpu", precision="fp32")


@pytest.mark.parametrize("sampler", ["ian-pc", "ian-2m"])
def test_a_seed_gives_the_same_volume_in_any_batch(pipeline, sampler):
    together = pipeline.sample(3, steps=8, sampler=sampler, seed=5, progress=False)
    alone = pipeline.sample(1, steps=8, sampler=sampler, seed=6, progress=False)
    assert together.shape == (3, 1, 16, 16, 16)
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-3)  # HU: 1e-3 HU is far below int16 output
    assert not torch.allclose(together[0], together[1])
    torch.testing.assert_close(pipeline.sample(1, steps=8, sampler=sampler, seed=6, progress=False), alone, rtol=0, atol=0)


def test_a_seed_gives_the_same_volume_in_any_batch_to_a_few_hu_at_bf16(run_dir):
    pipeline = load_pipeline(run_dir, device="cpu", precision="bf16")
    together = pipeline.sample(3, steps=8, seed=5, progress=False)
    alone = pipeline.sample(1, steps=8, seed=6, progress=False)
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=5.0)  # bf16 kernels block by batch size
    assert not torch.allclose(together[0], together[1], atol=5.0)


def test_nifti_outputs_carry_hu_spacing_and_a_real_affine(pipeline, tmp_path):
    written = sample_to_folder(pipeline, tmp_path, 2, steps=6, progress=False)
    assert [p.name for p in written] == ["sample_000000.nii.gz", "sample_000001.nii.gz"]
    volume = load_volume(written[1])
    expected = pipeline.sample(2, steps=6, progress=False)[1, 0].numpy()
    np.testing.assert_allclose(volume.array, np.rint(expected), atol=1.0)
    assert volume.spacing == pytest.approx(pipeline.spacing)
    assert not np.allclose(volume.affine, np.eye(4))
    sidecar = (tmp_path / "sample_000001.json").read_text()
    assert '"seed": 1' in sidecar and pipeline.checkpoint_sha256 in sidecar
    assert (tmp_path / "sample_000001.png").is_file() and (tmp_path / "samples_grid.png").is_file()


def test_rerun_skips_existing_volumes_and_ranks_split_the_seeds(pipeline, tmp_path):
    first = sample_to_folder(pipeline, tmp_path / "one", 3, steps=4, progress=False)
    stamps = [p.stat().st_mtime_ns for p in first]
    assert sample_to_folder(pipeline, tmp_path / "one", 3, steps=4, progress=False) == []
    assert [p.stat().st_mtime_ns for p in first] == stamps
    for rank in (0, 1):
        sample_to_folder(pipeline, tmp_path / "two", 3, steps=4, rank=rank, world_size=2, progress=False, grid=False)
    for path in first:
        np.testing.assert_array_equal(load_volume(tmp_path / "two" / path.name).array, load_volume(path).array)


def test_exported_weights_sample_the_same_volumes(run_dir, pipeline, tmp_path):
    exported = export_weights(run_dir, tmp_path / "model.safetensors", half=False)
    again = load_pipeline(exported, device="cpu", precision="fp32")
    torch.testing.assert_close(again.sample(1, steps=4, progress=False), pipeline.sample(1, steps=4, progress=False))
    half = export_weights(run_dir, tmp_path / "half.safetensors")
    assert half.stat().st_size < 0.6 * exported.stat().st_size
    with pytest.raises(FileExistsError):
        export_weights(run_dir, exported)


def test_bad_checkpoints_are_named(run_dir, tmp_path):
    state = load_checkpoint(run_dir)
    path = tmp_path / "truncated.pt"
    save_checkpoint(state, tmp_path / "full.pt")
    path.write_bytes((tmp_path / "full.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot read"):
        load_pipeline(path)
    state["meta"] = {**state["meta"], "model_name": "PRDiT-T/10/1", "stride": 8}
    save_checkpoint(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: weights do not fit PRDiT-T/10/1"):
        load_pipeline(tmp_path / "other.pt")


def test_unwritable_output_folder(pipeline, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PrditError, match="a-file/out: output folder is not writable"):
        sample_to_folder(pipeline, blocker / "out", 1, steps=2, progress=False)


def test_cli_seed_flags(run_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["sample", "--ckpt", str(run_dir), "--new", "--steps", "4", "--num-samples", "2", "--total-samples", "3",
                 "--output-dir", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"sample_00000{i}.nii.gz" for i in range(3)]
    assert '"sampler": "ian-pc"' in (out / "sample_000002.json").read_text()
    assert main(["sample", "--ckpt", str(run_dir), "--sampler", "nope", "--output-dir", str(out)]) == 2
    assert "unknown sampler 'nope'" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
