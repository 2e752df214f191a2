"""Activation checkpointing (``training.activation_checkpointing``) on CPU: a training step's peak memory and time.

    python -m benchmarks.bench_checkpointing [--sizes 64 128] [--stages s1 s2] [--presets base small] [--repeats 2]

For each preset's model (``base``: PRDiT-B/12/4 stride 8, the paper's; ``small``: PRDiT-S/12/4; stage 1 is its depth-0
model), batch 1, fp32, with and without checkpointing: a training step's memory (the trainer's model, EMA
and fused AdamW, measured on the second step in a fresh process: ``benchmarks.common.training_step_peaks``) as
its peak-RSS growth (what the step adds: activations and gradients) and as the whole process's peak (the runtime,
weights, EMA and AdamW state included, which checkpointing cannot shrink), and the step time (median of
interleaved repeats after a warm-up step). Stage 2 trains the global DiT on the frozen local denoiser, as in
training. Writes ``benchmarks/results/checkpointing_cpu.json`` after every row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from benchmarks import common
from prdit.io import atomic_write_text

KINDS = {"s1": "prdit-s1", "s2": "prdit-s2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--stages", nargs="+", choices=sorted(KINDS), default=["s1", "s2"])
    parser.add_argument("--presets", nargs="+", choices=sorted(common.PRESETS), default=["base"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/checkpointing_cpu.json")
    args = parser.parse_args()

    rows = []
    for preset_name, size, stage in itertools.product(args.presets, args.sizes, args.stages):
        preset = common.PRESETS[preset_name]
        kind = KINDS[stage]
        name = preset.name(0 if stage == "s1" else preset.depth)
        memory = {ckpt: common.training_step_peaks(name, size, args.batch, "fp32", ckpt, preset.stride) for ckpt in (False, True)}
        benches = {ckpt: common.build_bench(kind, preset, size, args.batch, grad_checkpoint=ckpt) for ckpt in (False, True)}
        for ckpt, bench in benches.items():  # time_interleaved keys by kind: one bench per call, alternating
            bench.kind = f"{kind}{'-ckpt' if ckpt else ''}"
        times = common.time_interleaved(list(benches.values()), args.repeats, warmup=1)
        seconds = {ckpt: statistics.median(times[bench.kind]) for ckpt, bench in benches.items()}
        row = {
            "preset": preset_name, "model": benches[False].description, "stage": stage, "size": size, "batch": args.batch,
            "tokens": (size // preset.stride) ** 3,
            "peak_rss_growth_mb": {"off": round(memory[False]["growth"] / 2**20), "on": round(memory[True]["growth"] / 2**20)},
            "memory_cut": round(1 - memory[True]["growth"] / memory[False]["growth"], 3),
            "process_peak_rss_mb": {"off": round(memory[False]["peak"] / 2**20), "on": round(memory[True]["peak"] / 2**20)},
            "process_peak_cut": round(1 - memory[True]["peak"] / memory[False]["peak"], 3),
            "step_s": {"off": round(seconds[False], 3), "on": round(seconds[True], 3)},
            "time_ratio_on_over_off": round(seconds[True] / seconds[False], 3),
            "all_step_s": {bench.kind: [round(t, 3) for t in times[bench.kind]] for bench in benches.values()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del benches
        payload = {"machine": common.machine(),
                   "memory_cut": "of the step's peak-RSS growth; process_peak_cut: of the whole process's peak",
                   "results": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")  # after every row: 128^3 takes long
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
