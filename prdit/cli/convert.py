"""``prdit convert``: a checkpoint of the paper's official code as prdit's exported ``.safetensors``."""

from __future__ import annotations

import argparse

from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint of the paper's official code (github Fredy-Zhang/PRDiT) to prdit's .safetensors",
        description=(
            "Read a checkpoint written by the official train.py ({model, ema, config, ...}; loaded without running "
            "any code from it), rename its weights to prdit's layout and write them with the metadata prdit samples "
            "with. Official checkpoints carry no HU mapping (the paper min-max normalises every volume on its own): "
            "--hu-range sets the HU range samples are mapped back to (default -1000 1000, recorded as assumed in the "
            "file and in every sample's sidecar). prdit sample and prdit.load_pipeline also read official "
            "checkpoints directly."
        ),
    )
    parser.add_argument("ckpt", help="official checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    parser.add_argument("--hu-range", dest="hu_range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                        help="HU that the model's intensity range maps back to (default -1000 1000)")
    parser.add_argument("--fp16", action="store_true", help="store float16 (half the size; default float32, exact)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from prdit.checkpoint import export_state, load_checkpoint
    from prdit.models.official import from_official_checkpoint, is_official_checkpoint

    if not args.out.endswith(".safetensors"):
        raise PrditError(f"--out {args.out}: use a .safetensors file name")
    source = Path(args.ckpt)
    if not source.is_file():
        raise PrditError(f"{source}: checkpoint file not found")
    state = load_checkpoint(source)
    if not is_official_checkpoint(state):
        raise PrditError(f"{source}: not a checkpoint of the official PRDiT code (prdit checkpoints: use prdit export)")
    converted = from_official_checkpoint(state, tuple(args.hu_range) if args.hu_range else None)
    path = export_state(converted, source, args.out, weights=args.weights, half=args.fp16, overwrite=args.overwrite)
    meta = converted["meta"]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {meta['model_name']} at {meta['input_size']}^3, "
          f"{args.weights} weights, HU range {meta['source']['hu_range']} ({meta['source']['hu_range_note'].split(':')[0]})")
