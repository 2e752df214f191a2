"""Faults and bad input, made for real: a full disk, a read-only folder, a NaN volume behind DataLoader workers, a 2D
NIfTI, unreadable DICOM, a pickle that would run code, ... Each gives one line ``prdit: error: ...`` naming the file
and the fix, exit status 2, and loses or overwrites nothing. The table "Guarantees under faults" of docs/faults.md lists
these tests by name.

A full disk and a read-only folder are real tmpfs mounts in a private mount namespace (``unshare -rm``): the
commands run in one Python process there, which also reports what the mounted folder holds afterwards.
"""

import errno
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import prdit.checkpoint
import prdit.io
from prdit.checkpoint import load_checkpoint, save_checkpoint
from prdit.cli import main
from prdit.config import config_from_dict, save_config
from prdit.errors import StorageError
from prdit.io import atomic_write_bytes, save_nifti
from prdit.runs import new_run_dir
from prdit.sample import claim_seed, load_pipeline, sample_to_folder
from prdit.train.logger import read_log
from prdit.train.trainer import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "prdit" / "assets" / "phantom-32.safetensors"


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``prdit ARGV`` in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("prdit: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def blob_folder(folder: Path, count: int = 8, nan_at: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        volume = rng.normal(-500, 100, (16, 16, 16)).astype(np.float32)
        if i == nan_at:
            volume[3, 4, 5] = np.nan
        np.save(folder / f"v{i}.npy", volume)
    return folder


def tiny_config(path: Path, data: Path, results: Path, **data_options) -> Path:
    options = "".join(f", {k}: {v}" for k, v in data_options.items())
    path.write_text(
        f"data: {{dataset: folder, root: {data}, image_size: 16{options}}}\n"
        "model: {name: PRDiT-T/6/0, stride: 4}\n"
        "training: {global_batch_size: 2, total_steps: 8, seed: 1}\n"
        f"output: {{results_dir: {results}}}\n"
        "logging: {log_every: 1, ckpt_every: 4, eval_every: 4, num_preview_samples: 0, tensorboard: false}\n"
    )
    return path


# ----------------------------------------------------------------------------------------------------------
# Private tmpfs mounts
# ----------------------------------------------------------------------------------------------------------


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt || mount -t tmpfs tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -rm` (user + mount namespaces) to mount a tmpfs")

_RUNNER = r"""
import contextlib, io, json, os, sys, traceback
from pathlib import Path
from prdit.cli import main

def complete(path):
    # Does the file read back whole? (a partial write would not)
    from prdit.io import load_volume
    from prdit.checkpoint import load_checkpoint
    try:
        if path.name.endswith(".nii.gz"):
            load_volume(path)
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            return path.read_bytes().endswith(b"IEND\xaeB`\x82")
        return True
    except Exception:
        return False

commands, inspect = json.loads(sys.argv[1])
results = []
for argv in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except BaseException:
            status = "traceback"
            traceback.print_exc()
    results.append({"status": status, "out": out.getvalue(), "err": err.getvalue()})
files = {str(p): {"size": p.stat().st_size, "complete": complete(p)} for p in sorted(Path(inspect).rglob("*")) if p.is_file()}
print(json.dumps({"results": results, "files": files}))
"""


def run_on_tmpfs(mount: Path, options: str, commands: list[list], cwd: Path) -> tuple[list[dict], dict]:
    """Mount a fresh tmpfs (``size=64k``, ``ro`` ...) on ``mount`` in a private namespace, run the prdit commands
    there in one process; returns each command's status/out/err and every file left in the mount with
    whether it reads back complete."""
    mount.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([[[str(a) for a in argv] for argv in commands], str(mount)])
    script = (f"mount -t tmpfs -o {shlex.quote(options)} tmpfs {shlex.quote(str(mount))} && "
              f"exec {shlex.quote(sys.executable)} -c {shlex.quote(_RUNNER)} {shlex.quote(payload)}")
    completed = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["results"], report["files"]


# ----------------------------------------------------------------------------------------------------------
# Row 4: disk full
# ----------------------------------------------------------------------------------------------------------


def test_disk_full_in_a_patched_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """ENOSPC from the file system, also when torch.save wraps it in a RuntimeError."""
    target = tmp_path / "step.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, target)

    class FullDisk:
        def __init__(self, path, mode):
            self.handle, self.written = open(path, mode), 0

        def write(self, data):
            if self.written + len(data) > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(prdit.io, "open", FullDisk, raising=False)
    with pytest.raises(StorageError, match=r"no space left on device while writing .*step.pt \(needed about 4 kB, "):
        save_checkpoint({"model": {"w": torch.zeros(1000)}}, target)
    with pytest.raises(StorageError, match=r"while writing .*big.bin \(needed about 3.0 MB"):
        atomic_write_bytes(tmp_path / "big.bin", bytes(3_000_000))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.pt"]


@needs_mounts
def test_disk_full_while_sampling_and_training(tmp_path):
    disk = tmp_path / "disk"
    data = blob_folder(tmp_path / "data")
    config = tiny_config(tmp_path / "tiny.yaml", data, disk / "results")
    results, files = run_on_tmpfs(disk, "size=160k", [
        ["train", "--config", config, "--no-progress", "training.total_steps=4"],  # the 10 MB checkpoint does not fit
        ["sample", "--ckpt", SHIPPED_MODEL, "--output-dir", disk / "samples", "--num-volumes", "6", "--steps", "1",
         "--no-progress"],  # two of six volumes fit
    ], cwd=tmp_path)
    trained, sampled = results
    assert_one_line_error(sampled["status"], sampled["err"], "no space left on device while writing", str(disk / "samples"))
    assert_one_line_error(trained["status"], trained["err"], "no space left on device while writing", "step-0000004.pt",
                          "needed about 10.")
    assert any(name.endswith(".nii.gz") for name in files)  # some volumes fitted ...
    assert all(info["complete"] for info in files.values()), files  # ... and no file is partial
    assert not [name for name in files if Path(name).name.startswith(".tmp-")]


# ----------------------------------------------------------------------------------------------------------
# Row 5: read-only output, checked before the work starts
# ----------------------------------------------------------------------------------------------------------


@needs_mounts
def test_read_only_outputs_are_refused_before_any_work(tmp_path):
    readonly = tmp_path / "readonly"
    phantoms = tmp_path / "phantoms-not-made"
    config = tmp_path / "phantom.yaml"
    config.write_text(f"data: {{dataset: phantom, root: {phantoms}, image_size: 32}}\n"
                      f"model: {{name: PRDiT-T/6/0, stride: 4}}\noutput: {{results_dir: {readonly / 'results'}}}\n")
    missing = tmp_path / "not-computed"  # the evaluation would fail on these inputs: refusing first proves the order
    results, files = run_on_tmpfs(readonly, "ro", [
        ["train", "--config", config, "--no-progress"],
        ["data", "phantom", "--num", "2", "--size", "32", "--out", readonly / "phantoms"],
        ["evaluate", "mmd", "--data_root_real", missing, "--data_root_fake", missing, "--out", readonly / "mmd.json"],
    ], cwd=tmp_path)
    for result, folder in zip(results, ["results", "phantoms", ""]):
        assert_one_line_error(result["status"], result["err"], f"{readonly / folder}".rstrip("/"), "Read-only file system")
    assert not phantoms.exists() and files == {}


# ----------------------------------------------------------------------------------------------------------
# Rows 6-10: bad data and checkpoints
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_nan_volume_gives_the_same_line_with_or_without_workers(tmp_path, capsys, workers):
    data = blob_folder(tmp_path / "data", nan_at=6)
    config = tiny_config(tmp_path / "tiny.yaml", data, tmp_path / "results", num_workers=workers)
    status, _, err = cli(["train", "--config", config, "--no-progress"], capsys)
    assert_one_line_error(status, err)
    assert err == f"prdit: error: {data / 'v6.npy'}: volume contains 1 NaN/inf voxels; fix or remove the file\n"


def test_2d_nifti_is_named_as_2d(tmp_path, capsys):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10), np.int16), np.eye(4)), path)
    status, _, err = cli(["preview", path], capsys)
    assert_one_line_error(status, err)
    assert err == f"prdit: error: {path} is 2D (10x10); a 3D volume is needed\n"
    np.save(tmp_path / "slice.npy", np.zeros((1, 12, 10), np.float32))
    assert_one_line_error(*cli(["preview", tmp_path / "slice.npy"], capsys)[::2], "slice.npy is 2D (12x10)")
    assert not list(tmp_path.glob("*.png"))


def test_only_corrupt_dicom_files_are_named_with_the_reason(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"\x00" * 200)
    (src / "b.dcm").write_bytes(b"not dicom at all")
    status, _, err = cli(["data", "lidc", "--src", src, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert_one_line_error(status, err, "no readable DICOM file; 2 unreadable:", str(src / "a.dcm"), str(src / "b.dcm"),
                          "no DICOM header")


def test_no_converted_case_exits_non_zero_with_the_reasons(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "CT_small.dcm")
    out = tmp_path / "out"
    status, printed, err = cli(["data", "lidc", "--src", src, "--out", out, "--min-slices", "1", "--no-progress"], capsys)
    assert_one_line_error(status, err, "no case was converted:", "fewer than 2 readable slices", str(out / "skipped.csv"))
    assert "next:" not in printed
    assert "fewer than 2 readable slices" in (out / "skipped.csv").read_text()
    assert (out / "manifest.csv").is_file() and not list(out.glob("volumes/*"))


def test_pickle_with_code_is_refused_for_safety(tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "ema": RunsCode()}, evil)
    status, _, err = cli(["sample", "--ckpt", evil, "--output-dir", tmp_path / "out", "--no-progress"], capsys)
    assert_one_line_error(status, err, f"{evil}: refused for safety: a pickle with code or objects",
                          f"(it would import {os.system.__module__}.system)")
    assert "weights_only" not in err and "truncated" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# Row 13: preview never overwrites silently
# ----------------------------------------------------------------------------------------------------------


def test_preview_keeps_an_existing_png(tmp_path, capsys):
    volume = save_nifti(tmp_path / "sample_000000.nii.gz", np.random.default_rng(0).normal(-500, 300, (8, 8, 8)))
    own = tmp_path / "sample_000000.png"
    own.write_bytes(b"the sample's own preview")
    status, printed, _ = cli(["preview", volume], capsys)
    assert status == 0 and printed.strip() == f"wrote {tmp_path / 'sample_000000-2.png'}"
    assert own.read_bytes() == b"the sample's own preview"
    assert (tmp_path / "sample_000000-2.png").read_bytes().startswith(b"\x89PNG")
    status, _, err = cli(["preview", volume, "--out", own], capsys)
    assert_one_line_error(status, err, f"{own} exists; pass --overwrite")
    assert own.read_bytes() == b"the sample's own preview"
    assert cli(["preview", volume, "--overwrite"], capsys)[0] == 0
    assert own.read_bytes().startswith(b"\x89PNG") and not (tmp_path / "sample_000000-3.png").exists()


# ----------------------------------------------------------------------------------------------------------
# Rows 3 and 11: one sample folder, one model; samplers running at once share the seeds
# ----------------------------------------------------------------------------------------------------------


def another_model(tmp_path: Path) -> Path:
    """The shipped phantom model with slightly different weights: another checkpoint, another SHA256."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(SHIPPED_MODEL), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    path = tmp_path / "other.safetensors"
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_sample_folder_never_mixes_checkpoints_or_settings(tmp_path, capsys):
    out = tmp_path / "samples"
    first = ["sample", "--output-dir", out, "--no-progress", "--ckpt", SHIPPED_MODEL, "--steps", "1"]
    assert cli([*first, "--num-volumes", "2"], capsys)[0] == 0
    before = folder_bytes(out)
    other = ["sample", "--output-dir", out, "--no-progress", "--ckpt", another_model(tmp_path), "--steps", "1"]
    status, _, err = cli([*other, "--num-volumes", "3"], capsys)
    assert_one_line_error(status, err, f"{out} holds samples of another model or setting", "checkpoint_sha256",
                          "choose another --output-dir")
    status, _, err = cli([*first[:-1], "2", "--num-volumes", "3"], capsys)  # same model, other number of steps
    assert_one_line_error(status, err, "steps 1 (here: 2)")
    assert folder_bytes(out) == before
    assert cli([*other, "--num-volumes", "2", "--overwrite"], capsys)[0] == 0  # every old volume is redone: allowed
    hashes = {json.loads(p.read_text())["checkpoint_sha256"] for p in out.glob("sample_*.json")}
    assert len(hashes) == 1 and hashes != {json.loads(before["sample_000000.json"])["checkpoint_sha256"]}


def test_samplers_share_seeds_and_reclaim_a_dead_ones_lock(tmp_path, capsys):
    pipeline = load_pipeline(SHIPPED_MODEL, device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sample_000000.lock").write_text("")  # left by a killed sampler: nobody holds it any more
    busy = claim_seed(out, 1)  # another sampler is working on seed 1 right now
    result = {}
    worker = threading.Thread(target=lambda: result.update(written=sample_to_folder(pipeline, out, 3, steps=1, progress=False)))
    worker.start()
    while not all((out / f"sample_00000{s}.nii.gz").exists() for s in (0, 2)):
        time.sleep(0.1)
    assert worker.is_alive()  # waiting for seed 1
    pipeline.save_nifti(pipeline.sample(1, steps=1, seed=1, progress=False), out, seeds=[1], sampler="ian-pc", steps=1)
    made_by_the_other = (out / "sample_000001.nii.gz").read_bytes()
    busy.release()
    worker.join(timeout=120)
    assert [p.name for p in result["written"]] == ["sample_000000.nii.gz", "sample_000002.nii.gz"]
    assert (out / "sample_000001.nii.gz").read_bytes() == made_by_the_other
    assert "1 volume(s) were sampled by another process" in capsys.readouterr().out
    assert not list(out.glob(".*.lock"))


def test_two_sampler_processes_into_one_folder_both_finish(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "prdit", "sample", "--ckpt", str(SHIPPED_MODEL), "--output-dir", str(out),
               "--num-volumes", "4", "--steps", "1", "--no-progress"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    finished = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], finished
    assert not any("Traceback" in err or "error" in err for _, err in finished)
    wrote = [int(out_text.split("wrote ")[1].split()[0]) for out_text, _ in finished]
    assert sum(wrote) == 4  # every volume sampled once
    assert sorted(p.name for p in out.glob("sample_*.nii.gz")) == [f"sample_00000{s}.nii.gz" for s in range(4)]
    assert not list(out.glob(".*.lock"))


# ----------------------------------------------------------------------------------------------------------
# Rows 1, 2, 12 and kill -9: a resumed run is the run it claims to be, and continues it exactly
# ----------------------------------------------------------------------------------------------------------


def in_child(work, kill_after: float | None = None) -> int:
    """Run ``work()`` in a forked process (one thread, as a fresh process would), optionally SIGKILLed after
    ``kill_after`` seconds; returns its exit code (-9 when the kill landed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        code = 1
        try:
            torch.set_num_threads(1)
            work()
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # already finished and reaped
            return 0
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def train_config(data: Path, results: Path, **training):
    return config_from_dict({
        "data": {"dataset": "folder", "root": str(data), "image_size": 16},
        "model": {"name": "PRDiT-T/6/0", "stride": 4},
        "training": {"global_batch_size": 2, "lr": 3e-3, "ema_decay": 0.9, "total_steps": 6, "seed": 3, **training},
        "output": {"results_dir": str(results), "keep_last": 2},
        "logging": {"log_every": 1, "ckpt_every": 2, "eval_every": 3, "num_preview_samples": 0, "tensorboard": False},
    }, "fault test")


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(run / "log.jsonl") if "loss" in r]


def test_resume_never_extends_an_older_finished_run(tmp_path, capsys):
    config = train_config(blob_folder(tmp_path / "data"), tmp_path / "results", total_steps=2)
    finished = train(config, TrainOptions(progress=False))
    kept = folder_bytes(finished / "checkpoints")
    killed = new_run_dir(config)  # a new run killed before its first checkpoint
    save_config(config, killed / "config.yaml")
    capsys.readouterr()
    assert train(config, TrainOptions(resume=True, progress=False)) == killed
    assert f"{killed} stopped before its first checkpoint: training it again from step 0" in capsys.readouterr().out
    assert folder_bytes(finished / "checkpoints") == kept
    assert_bit_identical(load_checkpoint(killed), load_checkpoint(finished))  # the same config, trained from scratch


def test_resume_refuses_settings_that_break_an_exact_continuation(tmp_path, capsys):
    config = tiny_config(tmp_path / "tiny.yaml", blob_folder(tmp_path / "data"), tmp_path / "results")
    command = ["train", "--config", config, "--no-progress"]
    assert cli([*command, "training.total_steps=4"], capsys)[0] == 0
    run = tmp_path / "results" / "001-PRDiT-T-6-0"
    before = folder_bytes(run) | folder_bytes(run / "checkpoints")
    status, _, err = cli([*command, "--resume_training", "training.total_steps=8", "training.lr=5e-4"], capsys)
    assert_one_line_error(status, err, f"{run} was trained with other settings (training.lr 0.0001 -> 0.0005)",
                          "--allow-config-change")
    assert folder_bytes(run) | folder_bytes(run / "checkpoints") == before
    status, printed, _ = cli([*command, "--resume_training", "training.total_steps=8", "training.lr=5e-4", "--allow-config-change"], capsys)
    assert status == 0 and "resuming at step 4 with training.lr 0.0001 -> 0.0005" in printed
    logged = [r["config_changes"] for r in read_log(run / "log.jsonl") if "config_changes" in r]
    assert logged == [{"training.lr": [0.0001, 0.0005], "training.total_steps": [4, 8]}]
    assert "lr: 0.0005" in (run / "config.yaml").read_text()


def test_a_checkpoint_write_killed_midway_leaves_no_temporary_file_after_the_resume(tmp_path, capsys):
    config = train_config(blob_folder(tmp_path / "data"), tmp_path / "results", total_steps=4)
    real_save = torch.save

    def killed_while_writing_step_4(state, handle):
        if state["step"] != 4:
            return real_save(state, handle)
        buffer = io.BytesIO()
        real_save(state, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def work():
        prdit.checkpoint.torch.save = killed_while_writing_step_4  # in the child only
        train(config, TrainOptions(progress=False))

    assert in_child(work) == -signal.SIGKILL
    checkpoints = tmp_path / "results" / "001-PRDiT-T-6-0" / "checkpoints"
    stale = [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    assert len(stale) == 1 and stale[0].stat().st_size > 100_000  # half a checkpoint, left by the kill
    assert (checkpoints / "latest").read_text().strip() == "step-0000002.pt"
    capsys.readouterr()
    train(config, TrainOptions(resume=True, progress=False))
    assert f"removed 1 unfinished temporary file(s) of an interrupted write: {stale[0].name}" in capsys.readouterr().out
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    assert load_checkpoint(checkpoints.parent)["step"] == 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path, float]:
    """The data, an uninterrupted run on it (in a child process, as the killed runs) and how long it took."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = blob_folder(folder / "data")
    began = time.monotonic()
    assert in_child(lambda: train(train_config(data, folder / "results"), TrainOptions(progress=False))) == 0
    return data, folder / "results" / "001-PRDiT-T-6-0", time.monotonic() - began


def kill_and_resume(seed: int, uninterrupted: tuple[Path, Path, float], tmp_path: Path, kills: int) -> None:
    """Train to the end while SIGKILLing the process at ``kills`` random moments (before, between and during
    checkpoint writes); after each kill the newest checkpoint must be intact and the next start resumes from it.
    The result must equal an uninterrupted run bit for bit: weights, EMA, optimiser, RNG and every logged loss."""
    data, straight, duration = uninterrupted
    rng = np.random.default_rng(seed)
    results = tmp_path / f"killed-{seed}"
    config = train_config(data, results)
    run = results / "001-PRDiT-T-6-0"
    landed = 0
    for attempt in range(kills):
        resume = run.exists()
        delay = rng.uniform(0, duration * (0.5 if attempt == 0 else 1.0))  # the first kill lands even on a faster run
        code = in_child(lambda: train(config, TrainOptions(resume=resume, progress=False)), kill_after=delay)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        landed += 1
        if (run / "checkpoints" / "latest").exists():
            assert load_checkpoint(run)["step"] % 2 == 0  # the newest checkpoint is whole
    assert in_child(lambda: train(config, TrainOptions(resume=run.exists(), progress=False))) == 0
    assert landed > 0
    assert_bit_identical(load_checkpoint(run), load_checkpoint(straight))
    assert losses(run) == losses(straight)
    assert not [p for p in run.rglob(".tmp-*")]


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(seed, uninterrupted, tmp_path):
    kill_and_resume(seed, uninterrupted, tmp_path, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_sigkill_at_random_moments_then_resume_ends_bit_identical_20_seeds(seed, uninterrupted, tmp_path):
    kill_and_resume(seed, uninterrupted, tmp_path, kills=4)


def test_every_row_of_the_documented_guarantees_names_a_test_that_exists():
    import ast
    import re

    page = (ROOT / "docs" / "faults.md").read_text()
    section = page.split("## Guarantees under faults", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Fault")]
    defined = {node.name for module in ("test_faults.py", "test_fuzz.py")
               for node in ast.walk(ast.parse((ROOT / "tests" / module).read_text())) if isinstance(node, ast.FunctionDef)}
    assert len(rows) >= 13
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])
        assert named and set(named) <= defined, row
