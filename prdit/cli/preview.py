"""``prdit preview``: a PNG montage of a volume."""

from __future__ import annotations

import argparse
from pathlib import Path

from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="PNG montage (axial, coronal, sagittal) of a volume",
        description="Write a PNG montage of axial, coronal and sagittal slices of a NIfTI/.npy/.npz volume in HU.",
    )
    parser.add_argument("file", help="volume file (.nii.gz, .nii, .npy, .npz)")
    parser.add_argument("--window", default="lung", help="lung, mediastinal, bone, or LEVEL,WIDTH in HU (default lung)")
    parser.add_argument("--out", default=None,
                        help="PNG path (default: FILE.png next to the file, or FILE-2.png, ... when that exists)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PNG (--out, or the default FILE.png)")
    parser.set_defaults(func=_run_preview)


def _parse_window(text: str):
    from prdit.preview import WINDOWS

    if text in WINDOWS:
        return text
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise PrditError(f"--window {text!r}: use one of {', '.join(WINDOWS)} or LEVEL,WIDTH such as -600,1500") from None
    return (level, width)


def _run_preview(args: argparse.Namespace) -> None:
    from prdit.io import unused_path, volume_stem
    from prdit.preview import save_montage

    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_name(volume_stem(source) + ".png")
    if out.exists() and not args.overwrite:
        if args.out:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --out another file")
        out = unused_path(out)  # e.g. a sample's own preview sits at FILE.png
    save_montage(source, out, window=_parse_window(args.window), title=source.name)
    print(f"wrote {out}")
