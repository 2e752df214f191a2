"""The whole default demo at fp32 against its default precision (auto: bf16 on this CPU).

    python -m benchmarks.bench_demo [--precisions fp32 auto] [--threads 1] [--one-at-a-time] [--quick]

Each precision runs ``prdit demo --precision P`` in its own process with ``--threads`` torch threads: all started
together, so that the machine's other load slows them alike, or ``--one-at-a-time`` on an idle machine. Per run
it records the wall time, the process's CPU time (``os.wait4``: what the run itself used, whatever else the cores
were doing), the demo's own part timings and its quality figures (``metrics.json``: HU-histogram W1, lung fraction and anatomy score of the shipped model's
samples and of the model the run trained). Writes ``benchmarks/results/demo_precision_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from benchmarks.common import machine
from prdit.io import atomic_write_text


def quality(metrics: dict) -> dict:
    """The figures the demo's index reports, per sample set."""
    figures = {}
    for name, entry in metrics.items():
        offline = entry["offline"]
        figures[name] = {
            "w1_hu": offline["hu_histogram"]["wasserstein_hu"],
            "lung_fraction_difference": offline["tissue_fractions"]["lung"]["abs_difference"],
            "anatomy_score": offline["anatomy"]["score"],
            "fid": entry["fid"],
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", choices=("auto", "bf16", "fp32"), default=["fp32", "auto"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan (a smoke run of this script)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the precisions one after the other (on an idle machine) instead of side by side")
    parser.add_argument("--work", default="results/bench-demo", help="folder for the demo runs")
    parser.add_argument("--out", default="benchmarks/results/demo_precision_cpu.json")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load_at_start = os.getloadavg()[0]
    running: dict[int, tuple[str, float, IO[str]]] = {}  # pid -> precision, start time, log
    results = {}

    def start(precision: str) -> None:
        folder = (Path(args.work) / precision).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        # each run in its own working directory: the demo generates its phantoms under ./data
        command = [sys.executable, "-m", "prdit", "demo", "--out", "demo", "--precision", precision,
                   "--no-progress", "--overwrite"] + (["--quick"] if args.quick else [])
        log = (folder / "demo.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
        running[process.pid] = (precision, time.perf_counter(), log)
        print(f"[bench_demo] started {' '.join(command)} (log {folder / 'demo.log'})", flush=True)

    def finish_one() -> None:
        """Wait for whichever run ends first: its wall time is its own, not the time until the others end."""
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            return
        precision, started, log = running.pop(pid)
        wall = time.perf_counter() - started
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"[bench_demo] the {precision} demo failed: see {Path(args.work) / precision / 'demo.log'}")
        metrics = json.loads((Path(args.work) / precision / "demo" / "metrics.json").read_text())
        results[precision] = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                              "parts_s": metrics["timings_s"], "quality": quality(metrics["metrics"])}
        print(f"[bench_demo] {precision}: {json.dumps(results[precision])}", flush=True)

    for precision in args.precisions:
        start(precision)
        while args.one_at_a_time and running:
            finish_one()
    while running:
        finish_one()

    payload = {"what": "the whole demo (prdit demo) at each precision, run side by side", "machine": machine(),
               "load_average_start_end": [round(load_at_start, 1), round(os.getloadavg()[0], 1)], "threads_per_run": args.threads,
               "runs": "one at a time" if args.one_at_a_time else "side by side", "plan": "quick" if args.quick else "default", "results": results}
    if "fp32" in results and len(results) > 1:
        other = next(p for p in results if p != "fp32")
        payload["speedup_over_fp32"] = {key: round(results["fp32"][key] / results[other][key], 2) for key in ("wall_s", "cpu_s")}
        print(f"[bench_demo] {other} over fp32: {payload['speedup_over_fp32']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
