"""``prdit plan``'s memory model against measured peaks of real training steps on CPU.

    python -m benchmarks.bench_plan [--configs all]

Each configuration runs in a fresh process: the model (stage 2: local denoiser frozen), its EMA, the trainer's
AdamW (``prdit.train.trainer.build_optimizer``) and a batch are built, the peak RSS is reset
(``/proc/self/clear_refs``) after a first training step (which creates the AdamW state), and a second step runs
(IaN loss under the configured precision, backward, clipping, AdamW, EMA). Its peak-RSS growth is what a step
adds to the model, EMA and optimiser state; the plan predicts it as max(activations, gradients) plus the bf16
weight copies (one process: no DDP buckets).
Writes ``benchmarks/results/plan_cpu.json`` (after every configuration).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import training_step_memory
from prdit.io import atomic_write_text
from prdit.plan import plan_memory

# (model, size, batch, precision, activation checkpointing, stride)
CONFIGS = {
    "S/12/4 64^3 b2": ("PRDiT-S/12/4", 64, 2, "fp32", False, None),
    "S/12/4 64^3 b2 ckpt": ("PRDiT-S/12/4", 64, 2, "fp32", True, None),
    "T/6/4 64^3 b1": ("PRDiT-T/6/4", 64, 1, "fp32", False, 4),
    "T/6/4 64^3 b1 bf16": ("PRDiT-T/6/4", 64, 1, "bf16", False, 4),
    "B/12/2 64^3 b1": ("PRDiT-B/12/2", 64, 1, "fp32", False, None),
    "S/12/0 64^3 b1": ("PRDiT-S/12/0", 64, 1, "fp32", False, None),
    "S/12/0 64^3 b1 ckpt": ("PRDiT-S/12/0", 64, 1, "fp32", True, None),
    # The paper's B/12/4 (stride 8, 4096 tokens) at 128^3, both stages: where activations dominate the step.
    "B/12/0 128^3 b1": ("PRDiT-B/12/0", 128, 1, "fp32", False, 8),
    "B/12/0 128^3 b1 ckpt": ("PRDiT-B/12/0", 128, 1, "fp32", True, 8),
    "B/12/4 128^3 b1": ("PRDiT-B/12/4", 128, 1, "fp32", False, 8),
    "B/12/4 128^3 b1 ckpt": ("PRDiT-B/12/4", 128, 1, "fp32", True, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--measured", default=None,
                        help="a results file of this script: compare the current plan with its measurements (no re-measuring)")
    parser.add_argument("--out", default="benchmarks/results/plan_cpu.json")
    args = parser.parse_args()
    earlier = {r["config"]: r["measured_mb"] * 2**20 for r in json.loads(Path(args.measured).read_text())["results"]} if args.measured else {}
    rows = []
    for key in (k for k in args.configs if not earlier or k in earlier):
        name, size, batch, precision, ckpt, stride = CONFIGS[key]
        plan = plan_memory(name, size, batch, 1, "ddp", ckpt, precision, stride)
        predicted = plan.step_growth + plan.weight_copies
        measured = earlier[key] if key in earlier else training_step_memory(*CONFIGS[key])
        row = {"config": key, "measured_mb": round(measured / 2**20), "predicted_mb": round(predicted / 2**20),
               "error": round(predicted / measured - 1, 3), "plan": {k: (round(v / 2**20, 1) if isinstance(v, float) else v)
                                                                     for k, v in plan.to_dict().items()}}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "measured_mb", "predicted_mb", "error")}), flush=True)
        payload = {"what": "peak RSS growth of one training step on CPU (fresh process) vs prdit.plan", "results": rows,
                   "max_abs_error": max(abs(r["error"]) for r in rows)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")  # after every row: 128^3 takes minutes
    print(f"wrote {args.out}: largest error {payload['max_abs_error']:.1%}")


if __name__ == "__main__":
    main()
