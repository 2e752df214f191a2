"""Where training and evaluation volumes come from: a folder, a list file, or a preprocessing manifest, and the
train/val split of a data config (explicit lists, ``ROOT/train.txt`` + ``ROOT/val.txt``, or a seeded split)."""

from __future__ import annotations

import os
from pathlib import Path

from prdit.config import DataConfig
from prdit.data.conditions import LABELS_DIR
from prdit.data.manifest import ok_outputs, split_paths
from prdit.errors import DataError
from prdit.io import TEMP_PREFIX, VOLUME_SUFFIXES, volume_suffix


def find_volumes(root: str | os.PathLike) -> list[Path]:
    """Sorted volume files under a folder (recursively, leaving out label maps in ``labels/`` folders), the ok cases of a preprocessing ``manifest.csv/.json``,
    or the files listed in a list file (one path a line, relative to the list's folder; ``#`` starts a comment)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if volume_suffix(root):
            return [root]
        if root.name.startswith("manifest") and root.suffix in (".csv", ".json"):
            return ok_outputs(root)
        entries = [line.split("#", 1)[0].strip() for line in root.read_text().splitlines()]
        paths = [Path(e) if Path(e).is_absolute() else root.parent / e for e in entries if e]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise DataError(f"{root}: {len(missing)} listed file(s) do not exist, first: {missing[0]}")
        if not paths:
            raise DataError(f"{root}: the list file names no volumes")
        return paths
    paths = sorted(
        p for p in root.rglob("*")
        if p.is_file() and volume_suffix(p) and not p.name.startswith(TEMP_PREFIX) and p.parent.name != LABELS_DIR
    )
    if not paths:
        raise DataError(
            f"{root}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)}); "
            "generate phantoms with `prdit data phantom --out DIR` or point data.root at your data"
        )
    return paths


def _list_or_none(root: Path, explicit: str | None, default_name: str) -> Path | None:
    if explicit:
        path = Path(explicit)
        path = path if path.is_absolute() or path.exists() else root / path
        if not path.exists():
            raise DataError(f"{explicit}: list file not found (looked at {path})")
        return path
    candidate = root / default_name if root.is_dir() else None
    return candidate if candidate is not None and candidate.exists() else None


def resolve_splits(config: DataConfig) -> tuple[list[Path], list[Path]]:
    """Training and validation files: explicit lists, ROOT/train.txt + ROOT/val.txt, or a seeded split."""
    root = Path(config.root)
    train_list = _list_or_none(root, config.train_list, "train.txt")
    val_list = _list_or_none(root, config.val_list, "val.txt")
    if train_list is not None:
        train = find_volumes(train_list)
        val = find_volumes(val_list) if val_list is not None else []
        return train, val
    paths = find_volumes(root)
    val_count = min(200, len(paths) // 10)
    return split_paths(paths, val_count)
