"""``prdit data qc``: one self-contained HTML page to look at an imported folder before training on it.

Per volume of the folder's manifest: its central axial, coronal and sagittal slices (PNG, wide window), its HU
histogram (inline SVG, log counts), its flags (duplicate, near-empty, truncated), source, geometry and what the
import did; flagged volumes come first. Then every refused scan and unreadable file with its reason.
"""

from __future__ import annotations

import base64
import csv
import io
import os
from html import escape
from pathlib import Path

import numpy as np

from prdit.data.manifest import STATUS_OK, ManifestRow, read_manifest
from prdit.data.preprocess import MANIFEST_NAME, SKIPPED_NAME
from prdit.errors import DataError
from prdit.io import atomic_write_text, load_volume
from prdit.preview import VIEWS, WINDOWS, central_slice
from prdit.report.html import _static

THUMB_PX = 150  # height of a slice picture on the page
HISTOGRAM_BINS = 80


def slice_png(image: np.ndarray, window: tuple[float, float]) -> str:
    """A base64 PNG of one slice in the (level, width) window."""
    from matplotlib.image import imsave

    level, width = window
    buffer = io.BytesIO()
    imsave(buffer, image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(volume: np.ndarray, low: float = -1100.0, high: float = 2000.0) -> str:
    """The volume's HU histogram as an inline SVG (log10 of 1 + count per bin, clipped to [low, high])."""
    counts, _ = np.histogram(np.clip(volume, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    heights = np.log10(1 + counts)
    heights = heights / max(float(heights.max()), 1e-9)
    width, height, bar = 240, 90, 240 / HISTOGRAM_BINS
    bars = "".join(f'<rect x="{i * bar:.2f}" y="{height * (1 - h):.2f}" width="{bar:.2f}" height="{height * h:.2f}"/>'
                   for i, h in enumerate(heights) if h > 0)
    ticks = "".join(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" class="tick"/><text x="{x + 2:.1f}" y="10">{hu:g}</text>'
        for hu in (-1000, 0, 1000) for x in [(hu - low) / (high - low) * width]
    )
    return (f'<svg class="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="HU histogram, log counts"><g class="bars">{bars}</g>{ticks}</svg>')


def _card(folder: Path, row: ManifestRow) -> str:
    volume = load_volume(folder / row.output)
    window = WINDOWS["wide"]
    planes = []
    for view in VIEWS:
        image, aspect = central_slice(volume.array, volume.spacing, view)
        height, width = image.shape
        shown = round(THUMB_PX * width / (height * aspect))
        planes.append(f'<figure><img alt="{view}" src="data:image/png;base64,{slice_png(image, window)}" '
                      f'style="width:{shown}px;height:{THUMB_PX}px"><figcaption>{view}</figcaption></figure>')
    flags = [f for f in row.flags.split("; ") if f]
    badges = "".join(f'<span class="flag">{escape(f)}</span>' for f in flags) or '<span class="ok">no flags</span>'
    facts = [("source", row.source), ("orientation", row.orientation), ("original", f"{'x'.join(map(str, row.original_shape))} voxels "
             f"at {' x '.join(f'{s:g}' for s in row.original_spacing)} mm"), ("done", row.actions or row.normalize),
             ("HU", f"min {row.hu_min:.0f}, mean {row.hu_mean:.0f}, max {row.hu_max:.0f}" if row.hu_min is not None else "")]
    if row.notes:
        facts.append(("notes", row.notes))
    listed = "".join(f"<dt>{k}</dt><dd>{escape(str(v))}</dd>" for k, v in facts if v)
    state = "flagged" if flags else "clean"
    return (f'<article class="card {state}" data-case="{escape(row.case_id)}"><h3>{escape(row.case_id)}</h3>'
            f'<div class="flags">{badges}</div><div class="planes">{"".join(planes)}</div>'
            f'<div class="hist">{histogram_svg(volume.array)}</div><dl class="facts">{listed}</dl></article>')


def _refused_table(folder: Path, rows: list[ManifestRow]) -> str:
    entries = [(row.case_id, row.source, row.reason.removeprefix(f"{row.source}: ")) for row in rows if row.status != STATUS_OK]
    report = folder / SKIPPED_NAME
    if report.is_file():  # files that never became a case (unreadable DICOM files, rejected series)
        with open(report, newline="") as handle:
            entries += [("", item["item"], item["reason"]) for item in csv.DictReader(handle) if item["kind"] not in ("case", "note")]
    if not entries:
        return '<section id="refused"><h2>Refused</h2><p class="muted">Nothing was refused.</p></section>'
    body = "".join(f"<tr><td>{escape(c)}</td><td>{escape(s)}</td><td>{escape(r)}</td></tr>" for c, s, r in entries)
    return (f'<section id="refused"><h2>Refused ({len(entries)})</h2><table class="refused"><thead><tr><th>case</th>'
            f"<th>source</th><th>reason</th></tr></thead><tbody>{body}</tbody></table></section>")


_QC_CSS = """
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card.flagged { border-color: var(--warn); }
.card h3 { margin: 0 0 6px; color: var(--text); font-size: 14px; }
.planes { display: flex; gap: 6px; align-items: flex-end; }
.planes figure { margin: 0; } .planes img { display: block; background: #000; image-rendering: pixelated; }
.planes figcaption { color: var(--muted); font-size: 11px; text-align: center; }
.hist { margin-top: 6px; } .histogram .bars { fill: var(--accent); } .histogram text { fill: var(--muted); font-size: 9px; }
.histogram .tick { stroke: var(--line); }
.flag { display: inline-block; background: rgba(210, 153, 34, 0.18); color: var(--warn); border-radius: 4px;
        padding: 1px 6px; margin: 0 6px 4px 0; font-size: 12px; }
.ok { color: var(--good); font-size: 12px; }
.card .facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 6px 0 0; font-size: 12px; }
.card .facts dt { color: var(--muted); } .card .facts dd { margin: 0; word-break: break-all; }
table.refused { border-collapse: collapse; width: 100%; font-size: 12.5px; }
table.refused td, table.refused th { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
"""


def render_qc(folder: str | os.PathLike) -> str:
    """The QC page of ``folder`` (a ``prdit data import``, ``lidc`` or ``rad`` output) as one HTML string."""
    folder = Path(folder)
    rows = read_manifest(folder / MANIFEST_NAME)
    ok = sorted((r for r in rows if r.status == STATUS_OK and r.output), key=lambda r: (not r.flags, r.case_id))
    flagged = sum(bool(r.flags) for r in ok)
    lists = {name: len((folder / name).read_text().split()) for name in ("train.txt", "val.txt") if (folder / name).is_file()}
    split = ", ".join(f"{name}: {count}" for name, count in lists.items())
    summary = (f"{len(ok)} volume(s), {flagged} flagged, {len(rows) - len(ok)} refused" + (f" · {split}" if split else ""))
    cards = "".join(_card(folder, row) for row in ok)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>QC: {escape(folder.name)}</title><style>{_static("report.css")}{_QC_CSS}</style></head>
<body><header class="top"><h1>Data QC: {escape(str(folder))}</h1>
<div class="subtitle" id="summary">{escape(summary)} · central slices in a wide window (-1000 to 1000 HU) · flagged first</div>
</header><nav><a href="#volumes">Volumes</a><a href="#refused">Refused</a></nav>
<main><section id="volumes"><h2>Volumes</h2><div class="cards">{cards}</div></section>{_refused_table(folder, rows)}</main>
<footer>prdit data qc · one file, opens offline · research use only, not for diagnosis</footer></body></html>
"""


def write_qc_page(folder: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write :func:`render_qc` of ``folder`` to ``out`` (default ``folder/qc.html``)."""
    path = Path(out) if out is not None else Path(folder) / "qc.html"
    if path.exists() and not overwrite:
        raise DataError(f"{path} exists; pass --overwrite to replace it")
    atomic_write_text(path, render_qc(folder))
    return path
