"""``prdit demo``: phantom data -> both stages -> samples -> metrics -> index.md."""

from __future__ import annotations

import argparse

from prdit.cli.common import add_device_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end to end on phantom chest CT: data -> stage 1 -> stage 2 -> samples -> metrics -> index.md",
        description=(
            "Generate phantom chest CTs, train both PRDiT stages briefly, sample NIfTI volumes in HU (from the shipped "
            "phantom model, and from the model just trained), compute metrics, and write OUT/index.md with the "
            "pictures and numbers. About 3-10 minutes on 2 idle CPU cores (it prints its own estimate first); --quick is a <= 3-minute smoke run."
        ),
    )
    parser.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training and 2 samples (<= 3 minutes)")
    parser.add_argument("--train-full", dest="train_full", action="store_true",
                        help="train the full phantom recipe (configs/phantom; hours on CPU) and sample from it instead of the shipped model")
    add_device_argument(parser)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="training and sampling precision: auto is bf16 autocast on CUDA and on CPUs with native bf16 "
                             "(AMX or AVX-512 bf16), fp32 elsewhere (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from prdit.demo import run_demo
    from prdit.runtime import configure_cpu_threads, keep_freed_memory

    print(f"[demo] {configure_cpu_threads()}", flush=True)
    keep_freed_memory()
    run_demo(args.out, quick=args.quick, train_full=args.train_full, device=args.device, progress=args.progress,
             overwrite=args.overwrite, precision=args.precision)
