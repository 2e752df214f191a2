"""Scaling: training-step time, memory and FLOPs against volume size, and the exponent of each in the voxel count.

Each model runs at every size up to its ``--max-size`` (the U-Net is slow on CPU); sizes that do not fit in
memory are recorded as such. The fitted exponent k (cost ~ voxels^k) tells how cost grows: 1 is linear in the
voxel count, attention over all tokens tends to 2.

CPU (default, a few minutes): ``python -m benchmarks.bench_scaling``
GPU: ``python -m benchmarks.bench_scaling --device cuda --preset base --sizes 64 128 192 256 --dtype bf16
--max-size unet=256``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import common
from benchmarks.bench_train_step import measure


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(voxels); None with fewer than two points."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(3 * np.log(sizes), np.log(values), 1)[0])


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    keys = (("seconds_median", "seconds per step"), ("step_memory_bytes", "memory added by a step (bytes)"),
            ("flops", "model FLOPs per step"))
    for kind, points in curves.items():
        for ax, (key, title) in zip(axes, keys):
            xs = [p["size"] for p in points if key in p]
            if xs:
                ax.plot(xs, [p[key] for p in points if key in p], "o-", label=common.LABELS[kind])
                ax.set_title(title)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("volume edge (voxels)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny", choices=sorted(common.PRESETS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--models", nargs="+", default=list(common.MODEL_KINDS), choices=common.MODEL_KINDS)
    parser.add_argument("--max-size", nargs="*", default=["unet=48"],
                        help="per-model largest size, e.g. unet=32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--name", default=None, help="results file stem (default: scaling_<device>)")
    args = parser.parse_args()
    common.setup_device(args.device, args.tf32)
    limits = {kind: int(size) for kind, size in (item.split("=") for item in args.max_size)}
    peaks = {args.dtype: common.matmul_peak_flops(args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])}
    all_models = list(args.models)
    curves: dict[str, list[dict]] = {kind: [] for kind in all_models}
    for size in args.sizes:
        args.models = [k for k in all_models if size <= limits.get(k, size)]
        rows = measure(args, size, args.dtype, args.checkpointing, peaks)
        for kind, row in rows.items():
            curves[kind].append(row)
            if "error" in row:
                print(f"{size:4d}^3 {kind:10} {row['error']}", flush=True)
                continue
            mem = row.get("step_memory_bytes")
            print(f"{size:4d}^3 {kind:10} {row['seconds_median'] * 1e3:9.1f} ms "
                  f"{'' if mem is None else f'{mem / 2**20:9.1f} MiB'} {row['flops'] / 1e9:9.2f} GFLOP "
                  f"MFU {row['mfu'] * 100:5.1f}%", flush=True)
    exponents = {}
    for kind, points in curves.items():
        ok = [p for p in points if "error" not in p]
        exponents[kind] = {key: exponent([p["size"] for p in ok if key in p], [p[key] for p in ok if key in p])
                           for key in ("seconds_median", "step_memory_bytes", "flops")}
        print(f"{kind:10} cost ~ voxels^k: " + ", ".join(
            f"{key} k={value:.2f}" for key, value in exponents[kind].items() if value is not None))
    args.models = all_models
    name = args.name or f"scaling_{torch.device(args.device).type}"
    payload = {"machine": common.machine(), "args": vars(args), "matmul_peak_flops": peaks,
               "preset": common.as_dict(common.PRESETS[args.preset]), "curves": curves, "exponents": exponents}
    print(f"wrote {common.write_json(name, payload)}")
    plot(curves, str(common.RESULTS_DIR / f"{name}.png"))


if __name__ == "__main__":
    main()
