"""Throughput of ``prdit data import`` on full-size CT: scans of 512 x 512 x 300 voxels per minute (issue 27: >= 4 on
2 cores).

The scans are synthetic chest-like volumes (int16 HU: an elliptic body with two lungs, a spine, noise of 20 HU, air
outside; 0.7 x 0.7 x 1.0 mm, so the 192 mm cube at 1.5 mm is a real resampling and crop) written once as
gzip-compressed NIfTI and, for the second case, as MHA. Each measurement imports the whole folder into a fresh output
folder with ``--workers`` processes (defaults: 128^3 at 1.5 mm, body crop) and counts wall-clock time, file reading
and decompression included, and the CPU time of all processes. On a shared machine the wall-clock rate is a lower
bound (the load average is recorded next to it); the rate that ``--workers`` cores give when they do nothing else
is ``60 * workers / (CPU seconds per scan)``.

    python -m benchmarks.bench_import --scans 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from prdit.data.collection import ImportOptions, import_collection
from prdit.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "import_cpu.json"
SHAPE = (300, 512, 512)  # [z, y, x]
SPACING = (1.0, 0.7, 0.7)  # (sz, sy, sx) mm


def synthetic_ct(seed: int) -> np.ndarray:
    """A chest-like int16 HU volume of :data:`SHAPE` (the same anatomy, different noise per seed)."""
    rng = np.random.default_rng(seed)
    _, h, w = SHAPE
    y, x = np.mgrid[:h, :w].astype(np.float32)
    x, y = (x - w / 2) * SPACING[2], (y - h / 2) * SPACING[1]
    axial = np.full((h, w), -1000.0, dtype=np.float32)
    axial[(x / 160) ** 2 + (y / 110) ** 2 < 1] = 40.0
    for side in (-1, 1):
        axial[((x - side * 75) / 55) ** 2 + ((y + 5) / 70) ** 2 < 1] = -850.0
    axial[(x / 18) ** 2 + ((y - 75) / 18) ** 2 < 1] = 700.0
    volume = np.empty(SHAPE, dtype=np.int16)
    for k in range(SHAPE[0]):
        noise = rng.normal(0.0, 20.0, (h, w)).astype(np.float32)
        volume[k] = np.rint(np.where(axial > -1000, axial + noise, -1000.0))
    return volume


def write_sources(folder: Path, scans: int, suffix: str) -> Path:
    """``scans`` synthetic scans as ``.nii.gz`` or ``.mha`` (kept between runs)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(scans):
        path = folder / f"scan_{index:03d}{suffix}"
        if path.exists():
            continue
        image = sitk.GetImageFromArray(synthetic_ct(index))
        image.SetSpacing(SPACING[::-1])
        sitk.WriteImage(image, str(path), useCompression=True)
        print(f"wrote {path}", flush=True)
    return folder


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def measure(src: Path, out: Path, workers: int) -> dict:
    """Wall-clock and CPU time of one import of ``src``; ``cores_equivalent``: scans per minute of ``workers`` cores
    that spend all their time on the import (the CPU time per scan), which load from other processes does not change."""
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    summary, _ = import_collection(src, out, ImportOptions(), workers=workers, progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if summary.ok != summary.processed:
        raise SystemExit(f"import refused scans: {summary.reasons}")
    return {"scans": summary.ok, "seconds": round(seconds, 2), "scans_per_minute": round(60 * summary.ok / seconds, 2),
            "cpu_seconds_per_scan": round(cpu / summary.ok, 2),
            "scans_per_minute_on_workers_cores": round(60 * workers * summary.ok / cpu, 2),
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=[".nii.gz", ".mha"])
    parser.add_argument("--work", default="results/bench_import", help="folder for the synthetic scans and outputs")
    args = parser.parse_args()
    work = Path(args.work)
    load_before = [round(v, 2) for v in os.getloadavg()]
    results = {}
    for suffix in args.formats:
        src = write_sources(work / f"src{suffix.replace('.', '-')}", args.scans, suffix)
        results[suffix] = {"workers": args.workers, **measure(src, work / "out", args.workers)}
        print(suffix, results[suffix], flush=True)
    payload = {
        "shape_zyx": list(SHAPE), "spacing_mm": list(SPACING), "options": {"size": 128, "spacing": 1.5, "crop": "body"},
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "results": results,
        "load_average_before": load_before,
    }
    atomic_write_text(RESULTS, json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
