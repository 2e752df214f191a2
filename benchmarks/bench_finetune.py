"""Fine-tuning against training from scratch on a small dataset of another kind (issue 27).

The shipped 32^3 phantom model (PRDiT-T/6/4, trained on phantoms with cortical bone at 700-1000 HU) is fine-tuned
with the small-data recipe ``configs/phantom/finetune.yaml`` on 20 dense-bone phantoms (cortical bone 1200-1900
HU), and the same architecture is trained from scratch (``--from_scratch``: every part random, nothing frozen) on
the same 20 volumes. Both runs go side by side, one torch thread each, bf16 autocast, so that they share the
machine's load alike; each run's training time is read from its own log (step / steps_per_s).

Every saved checkpoint (and the shipped model itself, at time 0) then draws ``--samples`` volumes, whose HU
histogram is compared (Wasserstein-1, :mod:`prdit.evaluation.offline` through ``prdit evaluate offline``) with
``--samples`` held-out dense-bone phantoms (seeds from 10000), within the model's HU window. The result: W1 against
training minutes for both, and the time fine-tuning needs to reach the from-scratch model's final W1.

    python -m benchmarks.bench_finetune train        # both trainings (about 20 CPU-min each by default)
    python -m benchmarks.bench_finetune evaluate     # sample + W1 for every checkpoint; writes the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prdit.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_cpu.json"
WORK = Path("results/bench_finetune")
CONFIG = "configs/phantom/finetune.yaml"
TRAIN_ROOT = "data/phantom-32-dense-n20"
HELD_OUT = WORK / "held-out"
SHIPPED = "prdit/assets/phantom-32.safetensors"


def _run(command: list[str], log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed when the process ends)
    return subprocess.Popen([sys.executable, "-m", "prdit", *command], env=env, stdout=out, stderr=subprocess.STDOUT)


def contenders(args: argparse.Namespace) -> dict[str, list[str]]:
    """The two training commands: the recipe, and from scratch for four times its steps."""
    common = [f"output.results_dir={WORK}", "output.keep_last=50", "--no-progress"]
    return {
        "finetune": ["train", "--config", CONFIG, f"training.total_steps={args.finetune_steps}",
                     f"logging.ckpt_every={args.finetune_steps // 6}", "output.run_name=finetune", *common],
        "scratch": ["train", "--config", CONFIG, "--from_scratch", f"training.total_steps={args.scratch_steps}",
                    "training.lr=5e-4", "training.warmup_steps=50", "training.ema_decay=0.999", "training.ema_warmup=true",
                    f"logging.ckpt_every={args.scratch_steps // 8}", "output.run_name=scratch", *common],
    }


def train(args: argparse.Namespace) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    for command in (["data", "phantom", "--num", "20", "--size", "32", "--dense-bone", "--out", TRAIN_ROOT],
                    ["data", "phantom", "--num", str(args.samples), "--size", "32", "--dense-bone", "--seed", "10000",
                     "--out", str(HELD_OUT)]):
        _run(command).wait()
    runs = {name: _run(command, WORK / f"{name}.log") for name, command in contenders(args).items()}
    for name, process in runs.items():
        if process.wait():
            raise SystemExit(f"{name} training failed: see {WORK / f'{name}.log'}")


def _w1(weights: str, out: Path, samples: int) -> float:
    """Sample ``samples`` volumes from ``weights`` and return their HU-histogram W1 against the held-out set (an
    earlier evaluation of as many samples is reused: a rerun only adds the new checkpoints)."""
    result = out / "offline.json"
    if result.is_file() and json.loads(result.read_text())["protocol"]["n_fake"] == samples:
        return float(json.loads(result.read_text())["hu_histogram"]["wasserstein_hu"])
    _run(["sample", "--ckpt", weights, "--output-dir", str(out), "--num-volumes", str(samples), "--batch-size", "8",
          "--precision", "bf16", "--no-progress"]).wait()
    _run(["evaluate", "offline", "--data_root_real", str(HELD_OUT), "--data_root_fake", str(out), "--bootstrap", "0",
          "--hu-window", "-1000", "2000", "--out", str(result), "--overwrite", "--no-progress"]).wait()
    return float(json.loads(result.read_text())["hu_histogram"]["wasserstein_hu"])


def _rates(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean steps per second since the start) of every logged training step."""
    entries = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(e["step"], e["steps_per_s"]) for e in entries if "steps_per_s" in e]


def side_by_side_rates() -> dict[str, float]:
    """Each run's mean speed over the same wall-clock window: while both trained (the fine-tuning's whole run),
    so that load on the shared machine after the shorter run ended does not favour the longer one."""
    finetune, scratch = (_rates(next(WORK.glob(f"*{name}"))) for name in ("finetune", "scratch"))
    ft_step, ft_rate = finetune[-1]
    window = ft_step / ft_rate
    return {"finetune": ft_rate, "scratch": min(scratch, key=lambda e: abs(e[0] / e[1] - window))[1]}


def evaluate(args: argparse.Namespace) -> None:
    rates = side_by_side_rates()
    payload: dict = {"samples": args.samples, "held_out_seeds": [10000, 10000 + args.samples],
                     "steps_per_s_side_by_side": rates, "runs": {}}
    for name in ("finetune", "scratch"):
        run_dir = next(WORK.glob(f"*{name}"))
        points = [] if name == "scratch" else [{"step": 0, "minutes": 0.0, "w1": _w1(SHIPPED, WORK / "samples-shipped", args.samples)}]
        wanted = getattr(args, f"{name}_points")
        for checkpoint in sorted((run_dir / "checkpoints").glob("step-*.pt")):
            step = int(checkpoint.stem.split("-")[1])
            if wanted and step not in wanted:
                continue
            w1 = _w1(str(checkpoint), WORK / f"samples-{name}-{step}", args.samples)
            points.append({"step": step, "minutes": step / rates[name] / 60, "w1": w1})
            print(f"{name} step {step}: {step / rates[name] / 60:.1f} min, W1 {w1:.1f} HU", flush=True)
        payload["runs"][name] = points
    target = payload["runs"]["scratch"][-1]
    reached = [p for p in payload["runs"]["finetune"] if p["w1"] <= target["w1"]]
    payload["scratch_final"] = target
    payload["finetune_reaches_scratch_at_minutes"] = reached[0]["minutes"] if reached else None
    payload["time_fraction"] = reached[0]["minutes"] / target["minutes"] if reached else None
    atomic_write_text(RESULTS, json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: v for k, v in payload.items() if k != "runs"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["train", "evaluate"])
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--scratch-steps", type=int, default=2400)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--finetune-points", type=int, nargs="*", default=[], help="evaluate only these steps (default: all)")
    parser.add_argument("--scratch-points", type=int, nargs="*", default=[], help="evaluate only these steps (default: all)")
    args = parser.parse_args()
    (train if args.phase == "train" else evaluate)(args)


if __name__ == "__main__":
    main()
