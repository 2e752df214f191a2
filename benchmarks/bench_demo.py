"""The whole default demo at fp32 against its default precision (auto: bf16 on this CPU), or against another prdit.

    python -m benchmarks.bench_demo [--precisions fp32 auto] [--threads 1] [--one-at-a-time] [--repeats 1] [--quick]
    python -m benchmarks.bench_demo --precisions auto --against ../prdit-72c00ee --one-at-a-time --threads 2 --repeats 3

Each variant runs ``prdit demo --precision P`` in its own process with ``--threads`` torch threads: all started
together, so that the machine's other load slows them alike, or ``--one-at-a-time`` on an idle machine.
``--against DIR`` adds the demo of the prdit checkout in DIR (e.g. ``git worktree add ../prdit-72c00ee 72c00ee``: the
version before issue 28) with its own defaults, and the speed-ups are over it. ``--repeats`` runs the variants in
rounds, the order reversed every other round, so that a machine whose speed drifts hits them alike. Per run it
records the wall time, the process's CPU time (``os.wait4``: what the run itself used, whatever else the cores were
doing), the demo's own part timings and its quality figures (``metrics.json``: HU-histogram W1, lung fraction and
anatomy score of the shipped model's samples and of the model the run trained). Writes
``benchmarks/results/demo_precision_cpu.json``.
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


def speedups(results: dict[str, list[dict]], reference: str) -> dict[str, dict]:
    """Each variant's speed-up over ``reference``: the ratio of the median times, and of each round's times."""
    base = results[reference]
    return {name: {key: {"of_medians": round(statistics.median(r[key] for r in base) / statistics.median(r[key] for r in runs), 3),
                         "per_round": [round(b[key] / r[key], 3) for b, r in zip(base, runs)]} for key in ("wall_s", "cpu_s")}
            for name, runs in results.items() if name != reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", choices=("auto", "bf16", "fp32"), default=["fp32", "auto"])
    parser.add_argument("--against", type=Path, help="a prdit checkout whose demo (its own defaults) the others are compared with")
    parser.add_argument("--against-name", help="its name in the results (default: the folder's name)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan (a smoke run of this script)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the variants one after the other (on an idle machine) instead of side by side")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all variants (default 1)")
    parser.add_argument("--work", default="results/bench-demo", help="folder for the demo runs")
    parser.add_argument("--out", default="benchmarks/results/demo_precision_cpu.json")
    args = parser.parse_args()
    if args.against is not None and not (args.against / "prdit" / "demo.py").is_file():
        parser.error(f"--against {args.against}: not a prdit checkout (no prdit/demo.py there)")

    # name -> (extra demo arguments, PYTHONPATH of the prdit to run: None for this one)
    variants: dict[str, tuple[list[str], str | None]] = {p: (["--precision", p], None) for p in args.precisions}
    against = None
    if args.against is not None:
        against = args.against_name or args.against.resolve().name
        variants[against] = ([], str(args.against.resolve()))
    load_at_start = os.getloadavg()[0]
    running: dict[int, tuple[str, float, IO[str]]] = {}  # pid -> variant, start time, log
    results: dict[str, list[dict]] = {name: [] for name in variants}

    def start(name: str) -> None:
        folder = (Path(args.work) / name).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        extra, source = variants[name]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])])
        # each run in its own working directory: the demo generates its phantoms under ./data
        command = [sys.executable, "-m", "prdit", "demo", "--out", "demo", *extra, "--no-progress", "--overwrite"] + (
            ["--quick"] if args.quick else [])
        log = (folder / "demo.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
        running[process.pid] = (name, time.perf_counter(), log)
        print(f"[bench_demo] started {name}: {' '.join(command)} (log {folder / 'demo.log'})", flush=True)

    def finish_one() -> None:
        """Wait for whichever run ends first: its wall time is its own, not the time until the others end."""
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            return
        name, started, log = running.pop(pid)
        wall = time.perf_counter() - started
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"[bench_demo] the {name} demo failed: see {Path(args.work) / name / 'demo.log'}")
        metrics = json.loads((Path(args.work) / name / "demo" / "metrics.json").read_text())
        run = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "parts_s": metrics["timings_s"],
               "quality": quality(metrics["metrics"]), "load_average_at_end": round(os.getloadavg()[0], 2)}
        results[name].append(run)
        print(f"[bench_demo] {name}: {json.dumps(run)}", flush=True)

    for round_index in range(args.repeats):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            start(name)
            while args.one_at_a_time and running:
                finish_one()
        while running:
            finish_one()

    payload = {"what": "the whole demo (prdit demo) per variant", "machine": machine(),
               "load_average_start_end": [round(load_at_start, 1), round(os.getloadavg()[0], 1)], "threads_per_run": args.threads,
               "runs": "one at a time" if args.one_at_a_time else "side by side", "rounds": args.repeats,
               "plan": "quick" if args.quick else "default", "against": str(args.against) if args.against else None,
               "results": results}
    reference = against or ("fp32" if "fp32" in results and len(results) > 1 else None)
    if reference is not None:
        payload[f"speedup_over_{reference}"] = speedups(results, reference)
        print(f"[bench_demo] over {reference}: {json.dumps(payload[f'speedup_over_{reference}'])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
