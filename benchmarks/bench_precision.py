"""The demo at fp32 against bf16 autocast: training steps/s of both stages and sampling time, side by side.

    python -m benchmarks.bench_precision [--repeats 5] [--seconds 4]

``training.precision: auto`` picks bf16 on a CPU with native bf16 (AMX or AVX-512 bf16); this measures what that
gains for the default demo on this machine. Each repeat times, in one process and interleaved (fp32, bf16, fp32,
...), the demo's training steps of stage 1 and stage 2 (``prdit.demo.time_training_steps``: forward, backward,
clipping, AdamW, EMA on the demo's batch of 32^3 volumes) and the shipped model sampling 4 volumes with its
default sampler, on this process's CPU time by default (one torch thread: robust to other processes' load). The demo's run time at each precision follows from the step rates through the demo's own
estimate (``prdit.demo.estimate_seconds``). Writes ``benchmarks/results/precision_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from prdit.demo import PLANS, SHIPPED_WEIGHTS, demo_configs, estimate_seconds, time_training_steps
from prdit.io import atomic_write_text
from prdit.runtime import describe_precision, keep_freed_memory
from prdit.sample import load_pipeline

PRECISIONS = ("fp32", "bf16")


def sampling_seconds(precision: str, volumes: int, clock) -> float:
    pipeline = load_pipeline(SHIPPED_WEIGHTS, device="cpu", precision=precision)
    began = clock()
    pipeline.sample(volumes, batch_size=volumes, progress=False)
    return clock() - began


def estimate(plan, rates: dict[str, list[float]], precision: str, repeat: int) -> float:
    """The demo's estimated seconds from one repeat's step rates."""
    return estimate_seconds(plan, plan.stage1_steps, plan.stage2_steps, rates[f"stage1_{precision}"][repeat],
                            rates[f"stage2_{precision}"][repeat])


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    return round(statistics.median(a / b for a, b in zip(numerators, denominators)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per training measurement (default 4)")
    parser.add_argument("--sample-volumes", dest="sample_volumes", type=int, default=4)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time (run with OMP_NUM_THREADS=1; robust to other load), wall: elapsed")
    parser.add_argument("--out", default="benchmarks/results/precision_cpu.json")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    keep_freed_memory()  # as the prdit commands do

    plan = PLANS["default"]
    stages = demo_configs(Path("results/bench-precision"), plan, "cpu")
    configs = {(stage, precision): config.model_copy(update={"training": config.training.model_copy(update={"precision": precision})})
               for stage, config in enumerate(stages, 1) for precision in PRECISIONS}
    rates: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for (stage, precision), config in configs.items():
            rates.setdefault(f"stage{stage}_{precision}", []).append(time_training_steps(config, args.seconds, clock=clock))
        for precision in PRECISIONS:
            rates.setdefault(f"sampling_{precision}_s", []).append(sampling_seconds(precision, args.sample_volumes, clock))
        print(json.dumps({key: round(values[-1], 3) for key, values in rates.items()}), flush=True)
    median = {key: statistics.median(values) for key, values in rates.items()}
    demo = {precision: estimate_seconds(plan, plan.stage1_steps, plan.stage2_steps, median[f"stage1_{precision}"],
                                        median[f"stage2_{precision}"]) for precision in PRECISIONS}
    payload = {
        "auto_here": describe_precision("auto", "cpu"),
        "torch_threads": torch.get_num_threads(),
        "clock": args.clock,
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "median": {key: round(value, 3) for key, value in median.items()},
        "ratios_bf16_over_fp32_median_of_repeats": {  # each repeat's pair ran back to back: robust to load swings
            "stage1_steps_per_s": paired_ratio(rates["stage1_bf16"], rates["stage1_fp32"]),
            "stage2_steps_per_s": paired_ratio(rates["stage2_bf16"], rates["stage2_fp32"]),
            "sampling_speed": paired_ratio(rates["sampling_fp32_s"], rates["sampling_bf16_s"]),
            "demo_estimated_speed": paired_ratio(*[[estimate(plan, rates, precision, i) for i in range(args.repeats)]
                                                   for precision in PRECISIONS]),
        },
        "ratios_bf16_over_fp32": {
            "stage1_steps_per_s": round(median["stage1_bf16"] / median["stage1_fp32"], 3),
            "stage2_steps_per_s": round(median["stage2_bf16"] / median["stage2_fp32"], 3),
            "sampling_speed": round(median["sampling_fp32_s"] / median["sampling_bf16_s"], 3),
            "demo_estimated_speed": round(demo["fp32"] / demo["bf16"], 3),
        },
        "demo_estimated_minutes": {precision: round(seconds / 60, 1) for precision, seconds in demo.items()},
        "all": {key: [round(v, 3) for v in values] for key, values in rates.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["ratios_bf16_over_fp32_median_of_repeats"]), f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
