"""Training step: PRDiT stage 1 / stage 2 against MONAI's 3D U-Net (DDPM) and a plain 3D DiT, same process.

Per model and volume size: seconds per step (forward + backward + AdamW, median of interleaved repeats), memory a
step adds (see ``benchmarks/common.py``), model FLOPs per step and MFU against this machine's measured matmul
peak; ratios U-Net / PRDiT and plain DiT / PRDiT. The U-Net and the plain DiT are parameter-matched to the full
(stage-2) PRDiT.

CPU (default, < 3 min): ``python -m benchmarks.bench_train_step``
GPU: ``python -m benchmarks.bench_train_step --device cuda --preset base --sizes 128 256 --dtypes fp32 bf16 --tf32
--checkpointing off on``
"""

from __future__ import annotations

import argparse
import gc

import torch

from benchmarks import common


def measure(args: argparse.Namespace, size: int, dtype: str, checkpointing: bool, peaks: dict[str, float]) -> dict:
    """All models at one size and precision; the rows of the result table."""
    preset = common.PRESETS[args.preset]
    cuda = torch.device(args.device).type == "cuda"
    kinds = [k for k in args.models if not (checkpointing and k == "unet")]
    benches, rows = [], {}
    for kind in kinds:
        row = rows[kind] = {"model": kind, "size": size, "dtype": dtype, "checkpointing": checkpointing}
        try:
            if cuda:
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            bench = common.build_bench(kind, preset, size, args.batch, args.device, dtype, checkpointing)
            row["description"] = bench.description
            row["params"] = common.count_parameters(bench.model)
            if cuda:
                built = torch.cuda.memory_allocated()
                for _ in range(2):
                    bench.step()
                torch.cuda.synchronize()
                row["step_memory_bytes"] = int(torch.cuda.max_memory_allocated() - built)
                row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated() - before)
            row["flops"] = common.step_flops(bench)
            benches.append(bench)
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
            bench = None
            gc.collect()
            torch.cuda.empty_cache()
    if not cuda and not args.no_memory:
        for kind in [b.kind for b in benches]:
            rows[kind]["step_memory_bytes"] = common.cpu_step_memory(kind, args.preset, size, args.batch, checkpointing)
    times = common.time_interleaved(benches, args.repeats)
    for kind, seconds in times.items():
        row = rows[kind]
        row["seconds"] = seconds
        row["seconds_median"] = common.median(seconds)
        row["flops_per_second"] = row["flops"] / row["seconds_median"]
        row["mfu"] = row["flops_per_second"] / peaks[dtype]
    del benches
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def ratios(rows: dict) -> dict:
    """Baseline / PRDiT for time and memory (> 1 means PRDiT is faster / leaner)."""
    out = {}
    for ours in ("prdit-s1", "prdit-s2"):
        for base in ("unet", "plain-dit"):
            if ours in rows and base in rows and "seconds_median" in rows[ours] and "seconds_median" in rows[base]:
                entry = {"time": rows[base]["seconds_median"] / rows[ours]["seconds_median"]}
                if "step_memory_bytes" in rows[ours] and "step_memory_bytes" in rows[base]:
                    entry["memory"] = rows[base]["step_memory_bytes"] / max(rows[ours]["step_memory_bytes"], 1)
                out[f"{base}/{ours}"] = entry
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    configs = [r for r in results]
    width = 0.8 / len(common.MODEL_KINDS)
    for i, kind in enumerate(common.MODEL_KINDS):
        xs, secs, mems = [], [], []
        for j, config in enumerate(configs):
            row = config["rows"].get(kind, {})
            if "seconds_median" in row:
                xs.append(j + i * width)
                secs.append(row["seconds_median"])
                mems.append(row.get("step_memory_bytes", 0) / 2**20)
        axes[0].bar(xs, secs, width, label=common.LABELS[kind])
        axes[1].bar(xs, mems, width, label=common.LABELS[kind])
    ticks = [f"{c['size']}^3 {c['dtype']}{' ckpt' if c['checkpointing'] else ''}" for c in configs]
    for ax, title in zip(axes, ("seconds per training step", "memory added by a step (MiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], ticks, rotation=20)
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny", choices=sorted(common.PRESETS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model (interleaved)")
    parser.add_argument("--models", nargs="+", default=list(common.MODEL_KINDS), choices=common.MODEL_KINDS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls for fp32 on CUDA")
    parser.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory probes (fresh processes)")
    parser.add_argument("--name", default=None, help="results file stem (default: train_step_<device>)")
    args = parser.parse_args()
    common.setup_device(args.device, args.tf32)
    torch.manual_seed(0)

    peak_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {d: common.matmul_peak_flops(args.device, peak_dtypes[d]) for d in args.dtypes}
    print("matmul peak: " + ", ".join(f"{d} {p / 1e12:.3f} TFLOP/s" for d, p in peaks.items()), flush=True)
    results = []
    for size in args.sizes:
        for dtype in args.dtypes:
            for ckpt in args.checkpointing:
                rows = measure(args, size, dtype, ckpt == "on", peaks)
                entry = {"size": size, "dtype": dtype, "checkpointing": ckpt == "on", "rows": rows,
                         "ratios": ratios(rows)}
                results.append(entry)
                for row in rows.values():
                    if "error" in row:
                        print(f"{size:4d}^3 {dtype} ckpt={ckpt:3} {row['model']:10} {row['error']}")
                        continue
                    mem = row.get("step_memory_bytes")
                    print(f"{size:4d}^3 {dtype} ckpt={ckpt:3} {row['model']:10} {row['seconds_median'] * 1e3:9.1f} ms "
                          f"{'' if mem is None else f'{mem / 2**20:8.1f} MiB'} {row['flops'] / 1e9:9.2f} GFLOP "
                          f"MFU {row['mfu'] * 100:5.1f}%  {row['description']}", flush=True)
                for key, value in entry["ratios"].items():
                    print(f"    {key:20} time x{value['time']:.2f}" +
                          (f"  memory x{value['memory']:.2f}" if "memory" in value else ""), flush=True)
    name = args.name or f"train_step_{torch.device(args.device).type}"
    payload = {"machine": common.machine(), "args": vars(args), "matmul_peak_flops": peaks,
               "preset": common.as_dict(common.PRESETS[args.preset]), "results": results}
    print(f"wrote {common.write_json(name, payload)}")
    plot(results, str(common.RESULTS_DIR / f"{name}.png"))


if __name__ == "__main__":
    main()
