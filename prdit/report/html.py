"""The report as one self-contained HTML page: inline CSS and JS, volumes as base64 int16, curves as inline SVG."""

from __future__ import annotations

import base64
import json
import time
from html import escape
from importlib.resources import files

from prdit import __version__
from prdit.evaluation.descriptions import (
    ARROWS,
    BETTER_WORDS,
    METRICS,
    REAL_VALUE,
    SPLIT_HALF,
    feature_warnings,
    format_number,
    metric_rows,
    protocol_summary,
    undescribed,
)
from prdit.preview import WINDOWS
from prdit.report.content import ReportContent, Run, VolumeSet
from prdit.report.curves import curves_svg
from prdit.report.labels import FACE_BITS

PLANES = ("axial", "coronal", "sagittal")


def _static(name: str) -> str:
    return files("prdit.report").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _script_json(value) -> str:
    """JSON that is safe inside a <script> element (no '</script>' can close it early)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _base64(array) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def volume_payload(sets: list[VolumeSet]) -> dict:
    """The viewer's data; a label map several volumes share (the same file) is embedded once."""
    masks: dict[tuple[str, tuple[int, ...]], int] = {}  # (SHA256, shown shape) -> index in mask_entries
    mask_entries: list[dict] = []
    for overlay in (v.overlay for s in sets for v in s.volumes):
        if overlay is not None and overlay.ident not in masks:
            masks[overlay.ident] = len(mask_entries)
            mask_entries.append({"source": overlay.source, "shape": list(overlay.labels.shape), "names": overlay.names,
                                 "colours": overlay.colours, "labels": _base64(overlay.labels), "edges": _base64(overlay.edges)})
    return {
        "windows": {name: list(window) for name, window in WINDOWS.items()},
        "default_window": "lung",
        "sets": [{"key": s.key, "label": s.label, "kind": s.kind} for s in sets],
        "masks": mask_entries,
        "face_bits": {f"{'zyx'[axis]}{'+' if side > 0 else '-'}": bit for (axis, side), bit in FACE_BITS.items()},
        "volumes": [
            {"set": s.key, "name": v.name, "shape": list(v.array.shape), "spacing": list(v.spacing), "info": v.info,
             "data": _base64(v.array.astype("<i2")),
             "mask": None if v.overlay is None else masks[v.overlay.ident]}
            for s in sets for v in s.volumes
        ],
    }


def _viewer(volume_set: VolumeSet) -> str:
    panes = "".join(
        f'<div class="pane" data-plane="{plane}"><div class="pane-title"><span>{plane}</span>'
        f'<span class="position"></span></div><div class="slice"><canvas aria-label="{plane} slice"></canvas>'
        f'<canvas class="contours" aria-label="{plane} label contours"></canvas></div>'
        f'<input type="range" min="0" max="0" value="0" aria-label="{plane} slice position"></div>'
        for plane in PLANES
    )
    return (f'<div class="viewer {volume_set.kind}" data-set="{escape(volume_set.key)}"><div class="viewer-head">'
            f'<span class="set-name">{escape(volume_set.label)}</span><select aria-label="volume"></select>'
            f'<span class="volume-info"></span><span class="readout">hover over a slice to read HU</span></div>'
            f'<div class="planes">{panes}</div><div class="legend" aria-label="labels"></div></div>')


def volumes_section(content: ReportContent) -> str:
    sets = [s for s in content.sets if s.volumes]
    if not sets:
        return ""
    presets = "".join(f'<button class="window-preset" data-window="{name}" title="level {lw[0]:g}, width {lw[1]:g} HU">'
                      f"{name.capitalize()}</button>" for name, lw in WINDOWS.items())
    shrunk = {v.downsampled_from for s in sets for v in s.volumes if v.downsampled_from}
    contours = ('<label><input type="checkbox" id="show-contours" checked> label contours <kbd>C</kbd></label>'
                if any(v.overlay for s in sets for v in s.volumes) else "")
    contour_keys = (" Label contours: the boundary of each label of the volume's label map, in its colour; "
                    "<kbd>C</kbd> shows or hides them." if contours else "")
    note = ""
    if shrunk:
        sizes = ", ".join("×".join(map(str, shape)) for shape in sorted(shrunk))
        note = (f'<p class="muted">Shown block-averaged from {sizes} to keep this file small '
                "(<code>prdit report --max-side</code> keeps more voxels).</p>")
    return f"""<section id="volumes"><h2>Volumes</h2>
<div class="toolbar"><span>Window</span><span class="presets">{presets}</span><span id="window-values" class="muted"></span>
<label><input type="checkbox" id="link-slices" checked> link slices across rows</label>
<label><input type="checkbox" id="show-crosshair" checked> crosshair</label>{contours}</div>
<p class="keys">Drag a slider, or point at a slice and use <kbd>↑</kbd><kbd>↓</kbd> / the mouse wheel; click to move the
other planes to that voxel; <kbd>L</kbd> <kbd>M</kbd> <kbd>B</kbd> <kbd>W</kbd> switch the window. Axial: anterior at the top, patient's right on the
left; coronal and sagittal: superior at the top.{contour_keys}</p>{note}
{''.join(_viewer(s) for s in sets)}
<script type="application/json" id="prdit-volumes">{_script_json(volume_payload(sets))}</script></section>"""


def metrics_section(content: ReportContent) -> str:
    if not content.metrics:
        why = next((escape(n) for n in content.notes if n.startswith("No metrics")),
                   "No metrics in this report: pass <code>--real DIR</code> (held-out real volumes) to compare the samples with data.")
        return f'<section id="metrics"><h2>Metrics</h2><p class="muted">{why}</p></section>'

    sets = list(content.metrics)
    rows = {name: {row.info.key: row for row in metric_rows(result, content.floor)} for name, result in content.metrics.items()}
    keys = [key for key in METRICS if any(key in r for r in rows.values())]
    head = "".join(f"<th>{escape(s)}</th>" for s in sets)
    body = []
    for key in keys:
        info = METRICS[key]
        present = [rows[s][key] for s in sets if key in rows[s]]
        warned = any(row.warnings for row in present)
        reference = next((row.reference for row in present if row.reference is not None), None)
        values = "".join(f"<td>{format_number(rows[s][key].value, info.digits) if key in rows[s] else '–'}</td>" for s in sets)
        flag = ' <span class="warn" title="see the warning below the table">⚠</span>' if warned else ""
        unit = f' <span class="muted">({escape(info.unit)})</span>' if info.unit else ""
        body.append(f'<tr><td class="name">{escape(info.name)}{unit}{flag}<span class="about">{escape(info.about)}</span></td>'
                    f'<td class="arrow" title="{BETTER_WORDS[info.better]}">{ARROWS[info.better]}</td>{values}'
                    f'<td class="reference" title="{escape(info.reference_how)}">{format_number(reference, info.digits)}</td></tr>')
    warnings = sorted({w for result in content.metrics.values() for w in feature_warnings(result)})
    callout = ""
    if warnings:
        callout = '<div class="callout">' + "".join(f"<p>⚠ <b>FID / MMD are weak here:</b> {escape(w)}.</p>" for w in warnings) + "</div>"
    protocol = "".join(f"<li><b>{escape(name)}</b>: {escape(protocol_summary(result))}</li>" for name, result in content.metrics.items())
    extra = {name: undescribed(result) for name, result in content.metrics.items()}
    others = ""
    if any(extra.values()):
        items = "".join(f"<li><b>{escape(name)}</b>: " + ", ".join(f"<code>{escape(k)}</code> = {format_number(v, 4)}" for k, v in numbers.items())
                        + "</li>" for name, numbers in extra.items() if numbers)
        others = f"<details><summary>Other numbers</summary><ul class='protocol'>{items}</ul></details>"
    return f"""<section id="metrics"><h2>Metrics</h2>{callout}
<table class="metrics"><thead><tr><th class="name">metric</th><th>better</th>{head}<th>real vs real</th></tr></thead>
<tbody>{''.join(body)}</tbody></table>
<p class="muted">↓ lower is better, ↑ higher is better, ≈ closer to the real value is better. <b>Real vs real</b>: for ↓
metrics {escape(SPLIT_HALF)}, the value a perfect generator would reach; for ≈ metrics {escape(REAL_VALUE)}.</p>
<ul class="protocol">{protocol}</ul>{others}</section>"""


def _facts(pairs: list[tuple[str, object]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in pairs if v not in (None, "")) + "</dl>"


def models_section(content: ReportContent) -> str:
    if not content.models:
        return ""
    blocks = []
    for model in content.models:
        blocks.append(f"<h3>{escape(model['set'])}</h3>" + _facts([
            ("model", model.get("model")), ("weights file", model.get("checkpoint")),
            ("SHA256", model.get("checkpoint_sha256")), ("weights", model.get("weights")),
            ("trained steps", model.get("trained_steps")),
            ("sampler", f"{model.get('sampler')}, {model.get('steps')} steps ({model.get('network_calls')} network calls)"),
            ("spacing", " × ".join(f"{s:g}" for s in model.get("spacing_mm", [])) + " mm" if model.get("spacing_mm") else None),
            ("seconds per volume", model.get("seconds_per_volume")), ("prdit", model.get("prdit_version")),
        ]))
    return f'<section id="model"><h2>Model</h2>{"".join(blocks)}</section>'


def _run_block(run: Run) -> str:
    steps = max((r.get("step", 0) for r in run.records), default=None)
    losses = [r["loss"] for r in run.records if isinstance(r.get("loss"), (int, float)) and not r.get("skipped_step")]
    svg = curves_svg(run.records)
    curve = f'<div class="curves"><div class="curve">{svg}</div></div>' if svg else '<p class="muted">No training log records.</p>'
    config = (f"<details><summary>config.yaml</summary><pre>{escape(run.config_text)}</pre></details>"
              if run.config_text else "")
    return (f"<h3>{escape(run.name)}</h3>" + _facts([
        ("run folder", run.path), ("checkpoint", run.checkpoint), ("SHA256", run.checkpoint_sha256),
        ("logged steps", steps), ("last training loss", format_number(losses[-1], 4) if losses else None),
    ]) + curve + config)


def training_section(content: ReportContent) -> str:
    if not content.runs:
        return ""
    return f'<section id="training"><h2>Training</h2>{"".join(_run_block(r) for r in content.runs)}</section>'


def render(content: ReportContent) -> str:
    """The whole page."""
    sections = [volumes_section(content), metrics_section(content), models_section(content), training_section(content)]
    links = [(anchor, label) for anchor, label in (("volumes", "Volumes"), ("metrics", "Metrics"), ("model", "Model"),
                                                   ("training", "Training")) if any(f'id="{anchor}"' in s for s in sections)]
    nav = "".join(f'<a href="#{a}">{label}</a>' for a, label in links)
    notes = "".join(f"<p>{escape(n)}</p>" for n in content.notes if not n.startswith("No metrics"))
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    script = f"<script>{_static('viewer.js')}</script>" if 'id="volumes"' in sections[0] else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(content.title)}</title><style>{_static("report.css")}</style></head>
<body><header class="top"><h1>{escape(content.title)}</h1>
<div class="subtitle">made by prdit {__version__} on {made} · one file, opens offline in any browser · research use only, not for diagnosis</div>
{notes}</header><nav>{nav}</nav><main>{''.join(sections)}</main>
<footer>prdit report · volumes are int16 HU embedded in this page; the JSON sidecars next to each NIfTI hold the full provenance.</footer>
{script}</body></html>
"""
