"""``prdit data phantom|lidc|rad|import|qc|split``: procedural phantoms, real CT data, any folder of scans, its
quality-check page and train/val lists."""

from __future__ import annotations

import argparse

from prdit.errors import PrditError


def _add_phantom_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate procedural chest-CT phantoms (NIfTI in HU) + train/val lists",
        description="Write NUM procedural chest-CT phantoms as int16 HU NIfTI (real affine) with train.txt / val.txt.",
    )
    parser.add_argument("--num", type=int, default=200, help="number of volumes (default 200)")
    parser.add_argument("--size", type=int, default=64, help="voxels per side, 32-256 (default 64)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first volume; volume i uses seed+i (default 0)")
    parser.add_argument("--spacing", type=float, default=None, help="voxel spacing in mm (default: the whole chest fits)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate volumes that already exist")
    parser.add_argument("--dense-bone", dest="dense_bone", action="store_true",
                        help="cortical bone 1200-1900 HU as in real CT (default 700-1000 HU, the shipped phantom model's data)")
    parser.add_argument("--labels", action="store_true",
                        help="also write each phantom's label map labels/<name>.nii.gz (uint8, same affine) and labels.json "
                        "naming its values (body, lung, bone, heart, vessel, airway, fat), for conditional models")
    parser.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> None:
    from prdit.data.phantom import write_phantom_dataset

    if not 32 <= args.size <= 256:
        raise PrditError(f"--size {args.size} is out of range: phantoms are 32 to 256 voxels per side")
    if args.num < 1:
        raise PrditError("--num must be at least 1")
    summary = write_phantom_dataset(
        args.out, num=args.num, size=args.size, seed=args.seed, spacing_mm=args.spacing, workers=args.workers,
        overwrite=args.overwrite, dense_bone=args.dense_bone, labels=args.labels,
    )
    print(f"wrote {summary['written']} volume(s), kept {summary['skipped']} existing, in {args.out}")


def _add_label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", default=None, metavar="DIR",
                        help="label maps of the scans, named like the cases: DIR/<case>.nii.gz (one multilabel file) or "
                        "DIR/<case>/ (one mask per structure, as TotalSegmentator writes); resampled with nearest "
                        "neighbour onto each volume's grid into OUT/labels/<case>.nii.gz + OUT/labels.json")
    parser.add_argument("--label-map", dest="label_map", default=None, metavar="MAP",
                        help="JSON/YAML mapping prdit labels (body, lung, bone, heart, vessel, airway, fat) to the label "
                        "files' values or structure names, e.g. {\"lung\": [\"lung_*\"], \"airway\": [\"trachea\"]}; "
                        "default: the files hold prdit's values already")
    parser.add_argument("--missing-labels", dest="missing_labels", choices=["fail", "skip"], default="fail",
                        help="a case without a label map: fail before any work (default) or skip that case")


def _label_options(args: argparse.Namespace):
    from prdit.data.label_maps import LabelOptions

    if args.labels is None:
        if args.label_map is not None:
            raise PrditError("--label-map maps the files of --labels DIR; pass --labels too")
        return None
    return LabelOptions(str(args.labels), args.label_map, args.missing_labels)


def _add_common_arguments(parser: argparse.ArgumentParser, percentile: float) -> None:
    parser.add_argument("--src", required=True, help="source folder (read only, never modified)")
    parser.add_argument("--out", required=True, help="output folder: volumes/, manifest.csv, skipped.csv")
    parser.add_argument("--size", type=int, default=256, help="edge of the output cube in voxels before pooling (default 256)")
    parser.add_argument("--normalize", choices=["hu", "paper"], default="hu",
                        help="hu: int16 HU, mapped by the dataset (default); paper: the official script's steps "
                        "and its per-volume [0, 1] float32 volumes (train them with data.intensity=paper)")
    parser.add_argument("--percentile", type=float, default=percentile,
                        help=f"--normalize paper: clip above this per-volume percentile (default {percentile})")
    parser.add_argument("--pool", type=int, default=1, help="average-pool factor after cropping (2: the paper's 256^3 -> 128^3)")
    parser.add_argument("--crop", choices=["center", "body"], default="center",
                        help="centre of the crop: the scan's centre (default, as the paper) or the body's bounding box")
    parser.add_argument("--interpolation", choices=["linear", "bspline"], default="linear", help="resampling interpolator")
    parser.add_argument("--skip-small", action="store_true",
                        help="skip scans smaller than the crop, as the paper does (default: pad them with -1000 HU)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo every case, replacing earlier outputs")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (for logs)")
    _add_label_arguments(parser)


def _print_summary(summary, out: str, normalize: str) -> None:
    print(f"{summary.ok} volume(s) written, {summary.skipped} skipped, {summary.kept} kept from an earlier run")
    print(f"manifest: {summary.manifest}\nskipped cases and files: {summary.report}")
    if summary.ok + summary.kept == 0:
        from prdit.errors import DataError

        more = f" (and {len(summary.reasons) - 3} more)" if len(summary.reasons) > 3 else ""
        raise DataError(f"no case was converted: {'; '.join(summary.reasons[:3])}{more}; every reason is in {summary.report}")
    hint = " data.intensity=paper" if normalize == "paper" else ""
    print(f"next: prdit data split --manifest {summary.manifest} --val 200 --seed 42, then train with data.root={out}{hint}")


def _run_lidc(args: argparse.Namespace) -> None:
    from prdit.data.preprocess import PreprocessOptions, preprocess_lidc

    options = PreprocessOptions(
        size=args.size, spacing=args.spacing, normalize=args.normalize, percentile=args.percentile, pool=args.pool,
        crop=args.crop, interpolation=args.interpolation, skip_small=args.skip_small, all_series=args.all_series,
        min_slices=args.min_slices, max_gap_factor=args.max_gap_factor, max_tilt_deg=args.max_tilt, labels=_label_options(args),
    )
    summary = preprocess_lidc(args.src, args.out, options, workers=args.workers, overwrite=args.overwrite, progress=args.progress)
    _print_summary(summary, args.out, args.normalize)


def _run_rad(args: argparse.Namespace) -> None:
    from prdit.data.preprocess import PreprocessOptions, preprocess_rad

    options = PreprocessOptions(
        size=args.size, spacing=args.spacing, normalize=args.normalize, percentile=args.percentile,
        hu_ceiling=1000.0 if args.normalize == "paper" else None, pool=args.pool, crop=args.crop,
        interpolation=args.interpolation, skip_small=args.skip_small, npz_key=args.npz_key, source_spacing=args.source_spacing,
        paper_crop=args.paper_crop, labels=_label_options(args),
    )
    summary = preprocess_rad(args.src, args.out, options, workers=args.workers, overwrite=args.overwrite, progress=args.progress)
    _print_summary(summary, args.out, args.normalize)


def _run_import(args: argparse.Namespace) -> None:
    from prdit.data.collection import ImportOptions, import_collection

    options = ImportOptions(size=args.size, spacing=args.spacing, crop=args.crop, hu_offset=args.hu_offset,
                            labels=_label_options(args))
    summary, (n_train, n_val) = import_collection(
        args.src, args.out, options, workers=args.workers, overwrite=args.overwrite, progress=args.progress
    )
    print(f"{summary.ok} volume(s) written, {summary.skipped} refused, {summary.kept} kept from an earlier run")
    for reason in summary.reasons:
        print(f"  refused {reason}")
    print(f"manifest: {summary.manifest}\nrefused scans and unreadable files: {summary.report}")
    print(f"train.txt: {n_train} volume(s), val.txt: {n_val} (duplicates and near-empty scans left out)")
    print(f"next: prdit data qc {args.out} --out {args.out}/qc.html, then train with data.dataset=folder data.root={args.out} "
          f"data.image_size={args.size}")


def _run_qc(args: argparse.Namespace) -> None:
    from prdit.report.qc import write_qc_page

    path = write_qc_page(args.folder, args.out, overwrite=args.overwrite)
    print(f"wrote {path}")


def _add_import_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="any folder of CT scans (NIfTI, NRRD, MHA/MHD, DICOM) -> training volumes + manifest + split",
        description=(
            "Find every CT scan under --src, recursively (NIfTI, NRRD, MHA/MHD, DICOM series), check that it holds HU, "
            "reorient it to LPS, resample it linearly to --spacing mm and crop (body bounding box, centre, or none: the "
            "whole scan) or pad with air to --size^3. Writes OUT/volumes/*.nii.gz (int16 HU), OUT/manifest.csv (source, "
            "original shape, spacing, orientation, what was done, flags, checksums), OUT/skipped.csv (every refused "
            "scan with its reason) and OUT/train.txt / OUT/val.txt (by patient where DICOM gives patient IDs; "
            "duplicates and near-empty scans left out). A rerun skips finished scans; --src is never written."
        ),
    )
    parser.add_argument("--src", required=True, help="source folder (read only, never modified)")
    parser.add_argument("--out", required=True, help="output folder (not inside --src)")
    parser.add_argument("--size", type=int, default=128, help="edge of the output cube in voxels (default 128)")
    parser.add_argument("--spacing", type=float, default=1.5, help="isotropic output spacing in mm (default 1.5)")
    parser.add_argument("--crop", choices=["body", "center", "none"], default="body",
                        help="cube centred on the body's bounding box (default), on the scan's centre, or none: the "
                        "whole scan, at a coarser spacing when it does not fit")
    parser.add_argument("--hu-offset", dest="hu_offset", type=float, default=None,
                        help="add this to scans without air (no value below -500), e.g. -1024 for CT stored without "
                        "its rescale intercept; scans already in HU are left alone")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo every scan, replacing earlier outputs")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (for logs)")
    _add_label_arguments(parser)
    parser.set_defaults(func=_run_import)

    qc = subparsers.add_parser(
        "qc",
        help="one HTML page to look at an imported folder: three-plane montage, HU histogram and flags per volume",
        description=(
            "Write one self-contained HTML page for a folder made by `prdit data import` (or lidc/rad): per volume its "
            "central axial, coronal and sagittal slices, its HU histogram and its flags, then every refused scan with "
            "its reason, so that bad scans are seen before training."
        ),
    )
    qc.add_argument("folder", help="folder with manifest.csv (the --out of `prdit data import`)")
    qc.add_argument("--out", default=None, help="HTML file to write (default FOLDER/qc.html)")
    qc.add_argument("--overwrite", action="store_true", help="replace an existing page")
    qc.set_defaults(func=_run_qc)


def _run_split(args: argparse.Namespace) -> None:
    from prdit.data.manifest import write_split

    train, val, n_train, n_val = write_split(args.manifest, val=args.val, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {train} ({n_train} volumes) and {val} ({n_val} volumes)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="prepare data: phantoms, LIDC-IDRI, RAD-ChestCT, any folder of scans, QC page, train/val splits",
        description="Prepare training data: NIfTI volumes in HU with their real geometry, manifests and train/val lists.",
    )
    subparsers = data.add_subparsers(dest="data_command", metavar="SOURCE", required=True)
    _add_phantom_parser(subparsers)
    lidc = subparsers.add_parser(
        "lidc",
        help="LIDC-IDRI or any DICOM CT tree -> canonical NIfTI volumes + manifest",
        description=(
            "Find every DICOM series under --src, keep one axial CT series per patient (most slices), order slices by "
            "position along the slice normal, convert to HU, resample to --spacing mm on an LPS grid and centre-crop "
            "or pad to --size^3. Writes OUT/volumes/*.nii.gz, OUT/manifest.csv and OUT/skipped.csv; a rerun skips "
            "finished cases. --normalize paper follows the official script instead: cubic-spline zoom of the voxel "
            "grid to --spacing, centre crop, clip below -1000 HU and above the cube's 99.9th percentile, min-max to [0, 1]."
        ),
    )
    _add_common_arguments(lidc, percentile=99.9)
    lidc.add_argument("--spacing", type=float, default=1.0, help="isotropic output spacing in mm (default 1.0)")
    lidc.add_argument("--all-series", action="store_true", help="convert every axial CT series, not one per patient")
    lidc.add_argument("--min-slices", type=int, default=10, help="fewest slices of a usable series (default 10)")
    lidc.add_argument("--max-gap-factor", type=float, default=2.0,
                      help="interpolate slice gaps up to this multiple of the median spacing; "
                      "larger gaps skip the case (default 2)")
    lidc.add_argument("--max-tilt", type=float, default=0.5, help="largest gantry tilt in degrees accepted (default 0.5)")
    lidc.set_defaults(func=_run_lidc)

    rad = subparsers.add_parser(
        "rad",
        help="RAD-ChestCT .npz volumes -> NIfTI volumes + manifest",
        description=(
            "Read every .npz under --src (HU array under --npz-key, 0.8 mm isotropic unless the file has a 'spacing' "
            "entry), centre-crop or pad to --size^3 on the source grid (or resample to --spacing), and write "
            "OUT/volumes/*.nii.gz, OUT/manifest.csv and OUT/skipped.csv. --normalize paper follows the official "
            "script: clip to [-1000, 1000] HU, centre crop 256^3 (--paper-crop), trilinear zoom to --size, clip above "
            "the 99.5th percentile, min-max to [0, 1] (the official loader trains these in [0, 1]: "
            "data.paper_scale=unit; the paper's text says [-1, 1]: the default)."
        ),
    )
    _add_common_arguments(rad, percentile=99.5)
    rad.add_argument("--spacing", type=float, default=None,
                     help="resample to this isotropic spacing in mm (default: keep the source grid)")
    rad.add_argument("--source-spacing", type=float, default=None,
                     help="spacing of the .npz volumes in mm (default: the file's 'spacing' entry, else 0.8)")
    rad.add_argument("--npz-key", default="ct", help="name of the HU array in the .npz files (default ct)")
    rad.add_argument("--paper-crop", type=int, default=256,
                     help="--normalize paper: edge of the centre crop zoomed to --size (default 256, as the official script)")
    rad.set_defaults(func=_run_rad)
    _add_import_parsers(subparsers)

    split = subparsers.add_parser(
        "split",
        help="deterministic train/val lists from a manifest",
        description=(
            "Shuffle the sorted outputs of the manifest's ok cases with numpy Generator(PCG64(SEED)) and write "
            "train.txt / val.txt (paths relative to the manifest's folder) next to the manifest."
        ),
    )
    split.add_argument("--manifest", required=True, help="manifest.csv (or .json) written by `prdit data lidc/rad`")
    split.add_argument("--val", type=int, default=200, help="number of validation volumes (default 200, as the paper)")
    split.add_argument("--seed", type=int, default=42, help="shuffle seed (default 42, as the paper)")
    split.add_argument("--overwrite", action="store_true", help="replace existing train.txt / val.txt with a different split")
    split.set_defaults(func=_run_split)
