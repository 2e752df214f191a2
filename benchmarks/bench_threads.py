"""Training steps/s of the demo's models against torch threads and OpenMP wait policy, with and without extra load.

    python -m benchmarks.bench_threads [--load 0 4] [--repeats 3] [--seconds 3] [--policies PASSIVE:1000 PASSIVE default]

Each wait policy runs in fresh processes (OpenMP reads it when it starts), alternating between policies; each
process times demo training steps (forward, backward, clipping, AdamW, EMA; batch 8 of 32^3) with every thread
count in turn, ``--seconds`` each after 2 warm-up steps (``prdit.demo.time_training_steps``, the demo's own
calibration), so that load from other processes hits the configurations alike. ``--load N`` adds N busy-loop
processes for the measurement. The 1-minute load average at the end of each round is recorded: on a shared
machine it includes everyone else's work. Writes ``benchmarks/results/threads_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prdit.io import atomic_write_text

WORKER = r"""
import json, sys
import torch
from pathlib import Path
from prdit.demo import PLANS, demo_configs, time_training_steps
seconds, stages, threads = float(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
configs = demo_configs(Path("results/bench-threads"), PLANS["default"], "cpu")
rates = {}
for stage in stages:
    for count in threads:  # interleaved: load from other processes hits every thread count alike
        torch.set_num_threads(count)
        rates[f"{stage},{count}"] = time_training_steps(configs[stage - 1], seconds)
print(json.dumps(rates))
"""


def measure(policy: str, stages: list[int], threads: list[int], seconds: float) -> dict[tuple[int, int], float]:
    """Steps/s per (stage, threads) in one fresh process with this OpenMP wait policy: ``OMP_WAIT_POLICY`` or
    ``OMP_WAIT_POLICY:GOMP_SPINCOUNT`` (e.g. ``PASSIVE:1000``, what the prdit command sets), ``default``: both unset."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if policy != "default":
        wait_policy, _, spin_count = policy.partition(":")
        env["OMP_WAIT_POLICY"] = wait_policy
        if spin_count:
            env["GOMP_SPINCOUNT"] = spin_count
    done = subprocess.run([sys.executable, "-c", WORKER, str(seconds), json.dumps(stages), json.dumps(threads)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker failed ({policy}):\n{done.stderr}")
    rates = json.loads(done.stdout.splitlines()[-1])
    return {tuple(map(int, key.split(","))): value for key, value in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 4], help="busy-loop processes to add (default 0 4)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--policies", nargs="+", default=["PASSIVE:1000", "PASSIVE", "default"],
                        help="OMP_WAIT_POLICY values, optionally with a GOMP_SPINCOUNT (PASSIVE:1000); default: both unset")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement (default 3)")
    parser.add_argument("--out", default="benchmarks/results/threads_cpu.json")
    args = parser.parse_args()

    results = []
    for load in args.load:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            time.sleep(2 if load else 0)
            rates: dict[tuple, list[float]] = {}
            load_averages = []
            for _ in range(args.repeats):
                for policy in args.policies:
                    for (stage, threads), rate in measure(policy, args.stages, args.threads, args.seconds).items():
                        rates.setdefault((stage, threads, policy), []).append(rate)
                load_averages.append(os.getloadavg()[0])
        finally:
            for process in busy:
                process.kill()
                process.wait()
        for (stage, threads, policy), values in rates.items():
            row = {"added_load": load, "load_average_1min": [round(v, 2) for v in load_averages], "stage": stage,
                   "threads": threads, "omp_wait_policy": policy, "steps_per_s_median": round(statistics.median(values), 3),
                   "steps_per_s": [round(v, 3) for v in values]}
            results.append(row)
            print(json.dumps(row), flush=True)
    payload = {"cpus": len(os.sched_getaffinity(0)), "seconds_per_measurement": args.seconds, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
