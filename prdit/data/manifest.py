"""Preprocessing manifests (one row per case, CSV or JSON) and the deterministic train/val split.

The split shuffles the *sorted* output paths of the ``ok`` cases with
``numpy.random.Generator(PCG64(seed)).permutation`` (what ``np.random.default_rng(seed)`` builds) and takes
the first ``val`` for validation; the paper uses seed 42 and 200 validation volumes. ``train.txt`` and
``val.txt`` are written next to the manifest, one path a line, relative to that folder, so
``data.root=<that folder>`` trains on them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import numpy as np

from prdit.errors import DataError
from prdit.io import atomic_write_text

T = TypeVar("T", Path, str)
STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"


@dataclass
class ManifestRow:
    """One case of a preprocessing run. Shapes are [z, y, x]; spacings (sz, sy, sx) mm; HU stats of the output grid."""

    case_id: str
    status: str  # ok | skipped
    source: str
    output: str = ""  # relative to the manifest's folder
    series_uid: str = ""
    series_description: str = ""
    original_shape: list[int] = field(default_factory=list)
    original_spacing: list[float] = field(default_factory=list)
    output_shape: list[int] = field(default_factory=list)
    output_spacing: list[float] = field(default_factory=list)
    hu_min: float | None = None
    hu_max: float | None = None
    hu_mean: float | None = None
    hu_p99_9: float | None = None
    normalize: str = ""
    reason: str = ""  # why a case was skipped
    notes: str = ""  # what was repaired (duplicate slices, interpolated gaps, unreadable files)
    patient_id: str = ""
    orientation: str = ""  # of the source's axes, e.g. LPS, RAS, "LPS oblique" (prdit data import)
    actions: str = ""  # what was done to the scan (prdit data import)
    flags: str = ""  # near-empty, truncated, duplicate (prdit data import)
    pixel_hash: str = ""  # of the source's values (prdit data import: duplicate detection)
    checksum: str = ""  # SHA-256 of the output file


_LIST_FIELDS = {"original_shape": int, "original_spacing": float, "output_shape": int, "output_spacing": float}
_FLOAT_FIELDS = {"hu_min", "hu_max", "hu_mean", "hu_p99_9"}
COLUMNS = [f.name for f in fields(ManifestRow)]


def _csv_value(name: str, value) -> str:
    if name in _LIST_FIELDS:
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _from_text(name: str, text: str):
    if name in _LIST_FIELDS:
        return [_LIST_FIELDS[name](v) for v in text.split()]
    if name in _FLOAT_FIELDS:
        return float(text) if text else None
    return text


def write_manifest(path: str | os.PathLike, rows: list[ManifestRow]) -> Path:
    """Write (atomically, replacing the previous version) a ``.csv`` or ``.json`` manifest sorted by case id."""
    path = Path(path)
    rows = sorted(rows, key=lambda r: r.case_id)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(name, getattr(row, name)) for name in COLUMNS])
    atomic_write_text(path, buffer.getvalue())
    return path


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a manifest written by :func:`write_manifest`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run `prdit data lidc` or `prdit data rad` first")
    try:
        if path.suffix.lower() == ".json":
            return [ManifestRow(**{k: v for k, v in item.items() if k in COLUMNS}) for item in json.loads(path.read_text())]
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"case_id", "status", "output"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: not a prdit manifest (missing columns {sorted(missing)})")
            return [ManifestRow(**{k: _from_text(k, v or "") for k, v in item.items() if k in COLUMNS}) for item in reader]
    except DataError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path}: malformed manifest ({type(error).__name__}: {error})") from None


def ok_outputs(manifest: str | os.PathLike) -> list[Path]:
    """Sorted output files of the manifest's ok cases (a training set can be read straight from a manifest)."""
    manifest = Path(manifest)
    outputs = sorted(manifest.parent / r.output for r in read_manifest(manifest) if r.status == STATUS_OK and r.output)
    missing = [path for path in outputs if not path.exists()]
    if missing:
        raise DataError(
            f"{manifest}: {len(missing)} output(s) listed as ok do not exist, first: {missing[0]}; rerun the preprocessing"
        )
    if not outputs:
        raise DataError(f"{manifest}: no case has status ok")
    return outputs


def split_paths(paths: list[T], val_count: int, seed: int = 42) -> tuple[list[T], list[T]]:
    """Deterministic shuffle with ``seed`` (``default_rng(seed)`` is ``Generator(PCG64(seed))``); the first ``val_count``
    are validation."""
    order = np.random.default_rng(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    return sorted(shuffled[val_count:]), sorted(shuffled[:val_count])


def write_split(
    manifest: str | os.PathLike, val: int = 200, seed: int = 42, overwrite: bool = False
) -> tuple[Path, Path, int, int]:
    """Write train.txt / val.txt next to ``manifest`` from its ``ok`` cases; returns (train, val, n_train, n_val).

    Existing lists with other content are kept unless ``overwrite``.
    """
    manifest = Path(manifest)
    folder = manifest.parent
    outputs = [path.relative_to(folder) for path in ok_outputs(manifest)]
    if not 1 <= val < len(outputs):
        raise DataError(
            f"--val {val}: the manifest has {len(outputs)} ok case(s); choose 1 to {len(outputs) - 1} validation volumes "
            "(to train without validation, point data.root at the folder instead)"
        )
    train, validation = split_paths(outputs, val, seed)
    targets = {folder / "train.txt": train, folder / "val.txt": validation}
    texts = {target: "".join(f"{p.as_posix()}\n" for p in paths) for target, paths in targets.items()}
    for target, text in texts.items():
        if target.exists() and target.read_text() != text and not overwrite:
            raise FileExistsError(f"{target} exists with a different split; pass --overwrite to replace it")
    for target, text in texts.items():
        atomic_write_text(target, text)
    return folder / "train.txt", folder / "val.txt", len(train), len(validation)
