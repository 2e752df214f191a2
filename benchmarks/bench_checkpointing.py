"""Activation checkpointing (``training.activation_checkpointing``) on CPU: a training step's peak memory and time.

    python -m benchmarks.bench_checkpointing [--sizes 64 128] [--stages s1 s2] [--preset base] [--repeats 2]

For a preset's model (``base``: PRDiT-B/12/4 stride 8, the paper's; ``small``: PRDiT-S/12/4; stage 1 is its depth-0
model), batch 1, fp32: the peak-RSS growth
of a training step (the trainer's model, EMA and fused AdamW, measured on the second step in a fresh process:
``benchmarks.common.training_step_memory``) and the step time (median of interleaved repeats after a warm-up
step), with and without checkpointing. Stage 2 trains the global DiT on the frozen local denoiser, as in training. Writes
``benchmarks/results/checkpointing_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks import common
from prdit.io import atomic_write_text

KINDS = {"s1": "prdit-s1", "s2": "prdit-s2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--stages", nargs="+", choices=sorted(KINDS), default=["s2"])
    parser.add_argument("--preset", choices=sorted(common.PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/checkpointing_cpu.json")
    args = parser.parse_args()

    preset = common.PRESETS[args.preset]
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            kind = KINDS[stage]
            name = preset.name(0 if stage == "s1" else preset.depth)
            memory = {ckpt: common.training_step_memory(name, size, args.batch, "fp32", ckpt, preset.stride) for ckpt in (False, True)}
            benches = {ckpt: common.build_bench(kind, preset, size, args.batch, grad_checkpoint=ckpt) for ckpt in (False, True)}
            for ckpt, bench in benches.items():  # time_interleaved keys by kind: one bench per call, alternating
                bench.kind = f"{kind}{'-ckpt' if ckpt else ''}"
            times = common.time_interleaved(list(benches.values()), args.repeats, warmup=1)
            seconds = {ckpt: statistics.median(times[bench.kind]) for ckpt, bench in benches.items()}
            row = {
                "model": benches[False].description, "stage": stage, "size": size, "batch": args.batch,
                "tokens": (size // preset.stride) ** 3,
                "peak_rss_growth_mb": {"off": round(memory[False] / 2**20), "on": round(memory[True] / 2**20)},
                "memory_cut": round(1 - memory[True] / memory[False], 3),
                "step_s": {"off": round(seconds[False], 3), "on": round(seconds[True], 3)},
                "time_ratio_on_over_off": round(seconds[True] / seconds[False], 3),
                "all_step_s": {bench.kind: [round(t, 3) for t in times[bench.kind]] for bench in benches.values()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del benches
    payload = {"machine": common.machine(), "preset": args.preset, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
