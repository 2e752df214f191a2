"""The run report: one self-contained HTML page to look at a run rather than read it.

Three-plane slice viewers (sliders, arrow keys, lung / mediastinal / bone windows, HU under the cursor) for the
generated volumes and, with ``real``, real ones beside them, label maps as contours over the slices; the metrics table in words with the real-vs-real
floor; training curves; the config and checkpoint SHA256. No network, no CDN: CSS, JS, volumes (base64 int16) and
plots (SVG) are inside the file.

>>> from prdit.report import write_report
>>> write_report("results/demo", "results/demo/report.html")                          # doctest: +SKIP
>>> write_report("samples/", "report.html", real="data/phantom/val.txt")              # doctest: +SKIP
>>> write_report("samples/", "report.html", labels="data/masks/labels/phantom_50000.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from prdit.data.sources import find_volumes
from prdit.errors import DataError
from prdit.io import atomic_write_text, load_volume
from prdit.report.content import SAMPLE_GLOB, ReportContent, VolumeSet, collect, report_volume

__all__ = ["ReportContent", "collect", "write_html", "write_report", "write_volume_report"]


def write_html(content: ReportContent, out: str | os.PathLike, overwrite: bool = True) -> Path:
    """Render ``content`` to ``out`` (atomically)."""
    from prdit.report.html import render

    out = Path(out)
    atomic_write_text(out, render(content), overwrite=overwrite)
    return out


def write_report(
    source: str | os.PathLike, out: str | os.PathLike, real: str | os.PathLike | list[Path] | None = None, metrics: bool = True,
    max_volumes: int = 6, max_side: int = 64, title: str | None = None, overwrite: bool = False,
    labels: str | os.PathLike | None = None,
) -> Path:
    """Write the report of a run, sample or demo folder to ``out``; returns its path.

    With ``real`` (a folder, a list file or a list of paths of real volumes) the real volumes are shown beside the
    generated ones and, when ``source`` has no ``metrics.json`` and ``metrics`` is true, every generated set is
    evaluated against them (with the real-vs-real floor). At most ``max_volumes`` volumes per set are embedded, each block-averaged to at
    most ``max_side`` voxels per side. Label maps are drawn as contours: the condition mask each sample's sidecar
    records (its SHA256 checked; a changed file is a warning), or ``labels`` (see :func:`collect`).
    """
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    content = collect(source, real, max_volumes=max_volumes, max_side=max_side, title=title, labels=labels)
    if real is not None and metrics and not content.metrics:
        from prdit.evaluation import evaluate_floor, evaluate_sets

        real_files = list(real) if isinstance(real, (list, tuple)) else find_volumes(real)
        spacing = tuple(load_volume(real_files[0]).spacing)
        with warnings.catch_warnings():  # small-N warnings are shown in the report, beside the numbers
            warnings.simplefilter("ignore", UserWarning)
            try:
                for volume_set in content.sets:
                    if volume_set.kind == "generated":
                        fake = sorted(Path(volume_set.source).glob(SAMPLE_GLOB))
                        content.metrics[volume_set.key] = evaluate_sets(real_files, fake, spacing=spacing)
                content.floor = evaluate_floor(real_files, spacing=spacing)
            except DataError as error:  # e.g. real and generated sizes differ: still show the volumes
                content.metrics, content.floor = {}, None
                content.notes.append(f"No metrics: {error}. Compare sets of one size with `prdit evaluate`.")
    return write_html(content, out, overwrite=overwrite)


def write_volume_report(
    out: str | os.PathLike, sets: dict[str, list[str | os.PathLike]], title: str, real: str | None = None,
    notes: list[str] | None = None, max_side: int = 64, overwrite: bool = True,
) -> Path:
    """A report of named lists of volume files, one viewer row each (e.g. ``{"measurement": [...], "restored": [...],
    "truth": [...]}``); the set named ``real`` is drawn as real data. Rows of different sizes stay linked by
    relative position."""
    content = ReportContent(title, notes=list(notes or []))
    for key, paths in sets.items():
        volumes = [report_volume(Path(p), max_side) for p in paths]
        content.sets.append(VolumeSet(key, key, "real" if key == real else "generated", volumes))
    return write_html(content, out, overwrite=overwrite)
