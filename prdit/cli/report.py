"""``prdit report``: one self-contained HTML page of a run, a sample folder or a demo folder."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="one self-contained HTML page of a run: 3D slice viewers, metrics in words, training curves",
        description=(
            "Write an HTML report of a run folder, a sample folder or a demo folder: axial/coronal/sagittal viewers "
            "with sliders, arrow keys, lung/mediastinal/bone windows and HU under the cursor; with --real the real "
            "volumes beside the generated ones and the metrics with their real-vs-real floor; training curves, the "
            "config and the checkpoint SHA256. One file, no network: it opens from disk in any browser."
        ),
    )
    parser.add_argument("source", help="run folder, sample folder (sample_*.nii.gz) or demo folder")
    parser.add_argument("--real", default=None, help="folder or list file of real volumes to show beside the samples and compare with")
    parser.add_argument("--out", default=None, help="HTML file to write (default SOURCE/report.html)")
    parser.add_argument("--labels", default=None,
                        help="label map NIfTI drawn as contours over every sampled volume, or a folder of label maps "
                             "matched by volume name (NAME.nii.gz or labels/NAME.nii.gz, as prdit data writes them) for "
                             "sampled and --real volumes; without it, the condition mask each sample's sidecar records")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false", help="with --real: show the volumes only, compute no metrics")
    parser.add_argument("--max-volumes", dest="max_volumes", type=int, default=6, help="volumes embedded per set (default 6)")
    parser.add_argument("--max-side", dest="max_side", type=int, default=64,
                        help="larger volumes are block-averaged to at most this many voxels a side (default 64; 64^3 is 0.7 MB a volume)")
    parser.add_argument("--title", default=None, help="page title (default: the source folder's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from prdit.report import write_report

    if args.max_volumes < 1 or args.max_side < 8:
        raise PrditError("--max-volumes must be at least 1 and --max-side at least 8")
    out = Path(args.out) if args.out else Path(args.source) / "report.html"
    if args.real and args.metrics and not (Path(args.source) / "metrics.json").is_file():
        print(f"[report] evaluating the samples against {args.real} and the real-vs-real floor "
              "(features, MS-SSIM, HU statistics; --no-metrics skips this) ...", flush=True)
    with warnings.catch_warnings(record=True) as caught:  # e.g. a condition mask changed since sampling: in the page too
        warnings.simplefilter("always", UserWarning)
        report = write_report(args.source, out, real=args.real, metrics=args.metrics, max_volumes=args.max_volumes,
                              max_side=args.max_side, title=args.title, overwrite=args.overwrite, labels=args.labels)
    for warning in caught:
        print(f"[report] warning: {warning.message}", flush=True)
    print(f"wrote {report} ({report.stat().st_size / 1e6:.1f} MB): open it in a browser")
