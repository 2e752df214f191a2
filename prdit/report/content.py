"""What a report shows, gathered from folders: volume sets, training runs, metrics.

A source folder can be a sample folder (``sample_*.nii.gz`` + JSON sidecars), a run folder (``config.yaml``,
``log.jsonl``, ``checkpoints/``), or a folder holding several of either (such as the demo's ``results/demo``,
whose ``metrics.json`` is read too). Runs named by the samples' sidecars are found from the checkpoint path, and
the condition masks they record are drawn as contours (:mod:`prdit.report.labels`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prdit.data.sources import find_volumes
from prdit.errors import PrditError
from prdit.io import load_volume, sha256_file, volume_stem
from prdit.report.labels import LabelOverlay, given_mask, load_overlay, recorded_mask

SAMPLE_GLOB = "sample_*[0-9].nii.gz"  # the sampled volumes, not the optional _raw / _x0 companions


@dataclass
class ReportVolume:
    """One volume as the viewer shows it: int16 HU ``[z, y, x]``, its spacing and a one-line description."""

    name: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    info: str = ""
    downsampled_from: tuple[int, int, int] | None = None
    overlay: LabelOverlay | None = None  # its label map, drawn as contours


@dataclass
class VolumeSet:
    key: str  # "samples", "real", ...
    label: str  # shown in the report
    kind: str  # "generated" or "real"
    volumes: list[ReportVolume]
    source: str = ""


@dataclass
class Run:
    """A training run: its log records, config text and latest checkpoint."""

    path: Path
    records: list[dict]
    config_text: str
    checkpoint: Path | None
    checkpoint_sha256: str | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class ReportContent:
    title: str
    sets: list[VolumeSet] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)  # set key -> evaluate_sets result
    floor: dict | None = None
    models: list[dict] = field(default_factory=list)  # what generated each set: sidecar facts
    notes: list[str] = field(default_factory=list)


def downsample_factor(shape: Sequence[int], max_side: int) -> int:
    """The smallest integer factor that brings every side to ``max_side`` or below."""
    return max(1, math.ceil(max(shape) / max_side))


def downsample(array: np.ndarray, spacing: Sequence[float], max_side: int):
    """Block-average by :func:`downsample_factor`."""
    factor = downsample_factor(array.shape, max_side)
    if factor == 1:
        return array, spacing, None
    cropped = array[tuple(slice(0, (n // factor) * factor) for n in array.shape)]
    d, h, w = (n // factor for n in array.shape)
    pooled = cropped.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5))
    return pooled, tuple(s * factor for s in spacing), tuple(array.shape)


def report_volume(path: Path, max_side: int, info: str = "", labels: Path | None = None) -> ReportVolume:
    """``path`` as the viewer shows it, with the label map ``labels`` (on its grid) reduced the same way."""
    volume = load_volume(path)
    array, spacing, original = downsample(volume.array, tuple(volume.spacing), max_side)
    clipped = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    overlay = None
    if labels is not None:
        overlay = load_overlay(labels, volume.array.shape, tuple(volume.spacing),
                               downsample_factor(volume.array.shape, max_side), path.name)
    return ReportVolume(volume_stem(path), clipped, spacing, info, original, overlay)


def sidecar_line(sidecar: dict) -> str:
    parts = [f"seed {sidecar['seed']}" if "seed" in sidecar else "",
             f"{sidecar.get('sampler')}, {sidecar.get('steps')} steps" if sidecar.get("sampler") else "",
             sidecar.get("model", "")]
    return " · ".join(p for p in parts if p)


def read_sidecar(volume_path: Path) -> dict:
    path = volume_path.with_name(volume_stem(volume_path) + ".json")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _sample_volume(path: Path, sidecar: dict, max_side: int, labels: str | os.PathLike | None, notes: list[str]) -> ReportVolume:
    """A sampled volume with its label map: ``labels`` (``--labels``) when it has one for it, else the condition
    mask its sidecar records. A recorded mask that no longer fits the volume is a warning in the page (the file
    was replaced after sampling); a ``--labels`` map on another grid is an error."""
    given = given_mask(labels, path) if labels is not None else None
    if given is not None:
        return report_volume(path, max_side, sidecar_line(sidecar), given)
    recorded = recorded_mask(path, sidecar, notes)
    try:
        return report_volume(path, max_side, sidecar_line(sidecar), recorded)
    except PrditError as error:
        if recorded is None:
            raise
        notes.append(f"⚠ {path.name}: no contours, {error}")
        return report_volume(path, max_side, sidecar_line(sidecar))


def sample_set(folder: Path, key: str, max_volumes: int, max_side: int, labels: str | os.PathLike | None = None,
               notes: list[str] | None = None) -> tuple[VolumeSet, dict]:
    """A generated set from a sample folder, and the sidecar facts of its first volume."""
    paths = sorted(folder.glob(SAMPLE_GLOB))[:max_volumes]
    sidecars = [read_sidecar(p) for p in paths]
    notes = [] if notes is None else notes
    volumes = [_sample_volume(p, s, max_side, labels, notes) for p, s in zip(paths, sidecars)]
    return VolumeSet(key, f"generated · {folder.name}", "generated", volumes, str(folder)), (sidecars[0] if sidecars else {})


def real_set(source: str | os.PathLike | list[Path], max_volumes: int, max_side: int,
             labels: str | os.PathLike | None = None) -> VolumeSet:
    """Real volumes from a folder, a list file or a list of paths; with a ``labels`` folder, their label maps."""
    if isinstance(source, (list, tuple)):
        paths, name, origin = list(source), "held-out volumes", ""
    else:
        paths, name, origin = find_volumes(source), Path(source).name, str(source)
    folder = labels if labels is not None and Path(labels).is_dir() else None  # one file is for the samples
    volumes = [report_volume(Path(p), max_side, labels=given_mask(folder, Path(p)) if folder else None)
               for p in paths[:max_volumes]]
    return VolumeSet("real", "real" if name == "real" else f"real · {name}", "real", volumes, origin)


def is_run(folder: Path) -> bool:
    return (folder / "log.jsonl").is_file() or ((folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir())


def read_run(folder: Path) -> Run:
    from prdit.runs import resolve_latest
    from prdit.train.logger import read_log

    try:
        checkpoint = resolve_latest(folder)
    except PrditError:
        checkpoint = None
    config = folder / "config.yaml"
    return Run(folder, read_log(folder / "log.jsonl"), config.read_text() if config.is_file() else "",
               checkpoint, sha256_file(checkpoint) if checkpoint and checkpoint.is_file() else None)


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def collect(source: str | os.PathLike, real: str | os.PathLike | list[Path] | None = None, max_volumes: int = 6, max_side: int = 64,
            title: str | None = None, labels: str | os.PathLike | None = None) -> ReportContent:
    """Everything a report of ``source`` shows (metrics only as found in ``source/metrics.json``).

    ``labels``: a label map drawn over every sampled volume, or a folder of label maps matched by volume name
    (``NAME.nii.gz`` or ``labels/NAME.nii.gz``, as ``prdit data`` writes them) for sampled and real volumes;
    sampled volumes without one show the condition mask their sidecar records.
    """
    source = Path(source)
    if not source.is_dir():
        raise PrditError(f"{source}: not a folder; pass a run folder, a sample folder or a demo folder")
    if labels is not None and not Path(labels).exists():
        raise PrditError(f"--labels {labels}: no such file or folder; pass a label NIfTI or a folder of them")
    content = ReportContent(title or f"prdit report · {source.resolve().name}")
    candidates = [source, *_children(source), *(_children(source / "runs") if (source / "runs").is_dir() else [])]
    sample_folders = [p for p in candidates if any(p.glob(SAMPLE_GLOB))]
    sample_folders += [p / "samples" for p in candidates if is_run(p) and any((p / "samples").glob(SAMPLE_GLOB))]
    run_folders = [p for p in candidates if is_run(p)]
    for folder in dict.fromkeys(sample_folders):
        key = folder.name if folder != source else "samples"
        volume_set, sidecar = sample_set(folder, key, max_volumes, max_side, labels, content.notes)
        content.sets.append(volume_set)
        if sidecar:
            content.models.append({"set": key, **sidecar})
            run = Path(sidecar.get("checkpoint", "")).parent.parent
            if sidecar.get("checkpoint") and is_run(run):
                run_folders.append(run)
    content.runs = [read_run(p) for p in dict.fromkeys(p.resolve() for p in run_folders)]
    if real is not None:  # right below the first generated set: the comparison people make first
        content.sets.insert(1, real_set(real, max_volumes, max_side, labels))
    metrics_file = source / "metrics.json"
    if metrics_file.is_file():
        stored = json.loads(metrics_file.read_text())
        content.metrics = stored.get("metrics", {})
        content.floor = stored.get("floor")
    if not content.sets and not content.runs:
        raise PrditError(f"{source}: no sampled volumes (sample_*.nii.gz) and no training run (log.jsonl) here or one level below")
    return content
