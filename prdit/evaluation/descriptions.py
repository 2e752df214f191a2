"""What each metric means, in one table: its name in words, unit, better direction, what the real-vs-real
reference is, and when its number is weak. The HTML report, ``index.md`` and the model card all read it, so a
metric is described once.

A metric is addressed by its dotted key in :func:`prdit.evaluation.evaluate_sets`' result, e.g. ``"fid"`` or
``"offline.hu_histogram.wasserstein_hu"``. Two kinds of reference sit beside each value:

- ``floor`` (for "lower is better" distances): the same metric between two disjoint halves of the real set, the
  value a perfect generator would reach at that sample size (see :func:`prdit.evaluation.evaluate_floor`);
- ``real`` (for "match the data" statistics such as a tissue fraction): the real set's own value, read from the
  key ``real_key`` of the same result.

To describe a new metric, add one :class:`MetricInfo` to :data:`METRICS`; scalars no entry describes are still
shown, under "other numbers", so nothing is hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from prdit.evaluation.anatomy import FEATURES as ANATOMY_FEATURES

Better = Literal["lower", "higher", "match"]
ARROWS: dict[str, str] = {"lower": "↓", "higher": "↑", "match": "≈"}
BETTER_WORDS: dict[str, str] = {"lower": "lower is better", "higher": "higher is better", "match": "closer to the real value is better"}

SPLIT_HALF = "the same metric between two disjoint halves of the real set (N/2 each)"
REAL_VALUE = "the real set's own value"


@dataclass(frozen=True)
class MetricInfo:
    """One metric as a reader needs it."""

    key: str  # dotted path in the evaluate_sets result
    name: str  # in words
    unit: str  # "" when dimensionless
    better: Better
    about: str  # one line: what it measures
    reference: Literal["floor", "real"] = "floor"
    real_key: str | None = None  # for reference == "real": where the real set's value is
    uses_features: bool = False  # FID/MMD: weak with random-init features or N below the feature dimension
    digits: int = 3  # significant digits shown

    @property
    def reference_how(self) -> str:
        return SPLIT_HALF if self.reference == "floor" else REAL_VALUE


def _tissue(name: str, words: str) -> MetricInfo:
    return MetricInfo(
        f"offline.tissue_fractions.{name}.fake_mean", f"{words} fraction", "", "match",
        f"mean fraction of voxels in the {words.lower()} HU range", reference="real",
        real_key=f"offline.tissue_fractions.{name}.real_mean",
    )


# The anatomy features shown as rows (the others stay in the JSON and under "other numbers").
ANATOMY_HEADLINE = ("lung_fraction_of_body", "lung_components", "body_surface_ratio", "lung_mask_mean_hu",
                    "lung_mask_std_hu", "soft_tissue_mean_hu", "middle_lung_fraction", "inferior_soft_tissue_fraction")


def _anatomy(name: str) -> MetricInfo:
    words, unit = ANATOMY_FEATURES[name]
    return MetricInfo(
        f"offline.anatomy.features.{name}.fake_mean", f"Anatomy: {words}", "" if unit == "count" else unit, "match",
        f"mean over the volumes of: {words}", reference="real", real_key=f"offline.anatomy.features.{name}.real_mean",
    )


METRICS: dict[str, MetricInfo] = {info.key: info for info in (
    MetricInfo("fid", "Fréchet distance (FID) of 3D features", "", "lower",
               "distance between Gaussians fitted to MedicalNet features of each set", uses_features=True),
    MetricInfo("mmd", "MMD of 3D features (paper protocol)", "", "lower",
               "kernel distance between the feature sets: sqrt of the biased RBF MMD², median-heuristic bandwidth",
               uses_features=True),
    MetricInfo("mmd2_rbf_unbiased", "MMD² of 3D features, unbiased RBF", "", "lower",
               "unbiased estimate of the squared RBF MMD (can be negative when the sets are close)", uses_features=True),
    MetricInfo("offline.hu_histogram.wasserstein_hu", "HU histogram distance (Wasserstein-1)", "HU", "lower",
               "how far, in HU, the pooled intensity histograms are apart (no network weights involved)"),
    MetricInfo("offline.hu_histogram.jensen_shannon_bits", "HU histogram divergence (Jensen-Shannon)", "bits", "lower",
               "overlap of the pooled intensity histograms: 0 = identical, 1 = disjoint"),
    _tissue("lung", "Lung"),
    _tissue("fat", "Fat"),
    _tissue("soft_tissue", "Soft-tissue"),
    _tissue("bone", "Bone"),
    MetricInfo("offline.power_spectrum.log10_distance", "Power-spectrum distance, all frequencies", "log10", "lower",
               "mean |log10 power ratio| over radial frequencies: 1.0 = a tenfold mismatch"),
    MetricInfo("offline.power_spectrum.high_frequency_log10_distance", "Power-spectrum distance, fine detail",
               "log10", "lower", "the same above 0.25 cycles/voxel: noise and texture"),
    MetricInfo("offline.power_spectrum.high_frequency_power_ratio", "Fine-detail power, generated / real", "", "match",
               "power above 0.25 cycles/voxel relative to the real set's: below 1 = too smooth, above 1 = too noisy "
               "(a perfect generator: about 1, see the real-vs-real value)"),
    MetricInfo("offline.anatomy.score", "Anatomy score", "", "lower",
               "mean over the anatomy features below of |generated mean - real mean| / real std (body and lung masks, "
               "tissue fractions per z third, HU per tissue)"),
    *(_anatomy(name) for name in ANATOMY_HEADLINE),
    MetricInfo("ms_ssim.fake.mean", "MS-SSIM between samples (diversity)", "", "match",
               "mean 3D MS-SSIM over pairs of volumes: higher = more alike, too high suggests mode collapse",
               reference="real", real_key="ms_ssim.real.mean"),
)}

# Scalars that are settings of a metric or restate a described one: never listed as "other numbers".
SETTINGS = ("range_hu", "bin_hu", "high_frequency_threshold", "bins", "hu_range", "pairs", "scales", "weights", "steps",
            "real_mean", "real_std", "fake_std", "std", "mmd_gamma", "abs_difference", "standardised_difference",
            "fake_missing")
REAL_KEYS = {info.real_key for info in METRICS.values() if info.real_key}


@dataclass(frozen=True)
class MetricRow:
    """One described metric of one result: its value, its reference and the warnings that weaken it."""

    info: MetricInfo
    value: float | None
    reference: float | None
    warnings: tuple[str, ...] = ()


def lookup(result: dict | None, key: str) -> float | None:
    """The number at a dotted key of a nested result, or None when absent or not a finite number."""
    value = result
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def feature_warnings(result: dict) -> list[str]:
    """Why the feature metrics (FID, MMD) of this result are weak, in words; empty when they are sound."""
    protocol = result.get("protocol", {})
    notes = []
    if str(protocol.get("weights", "")).startswith("random-init"):
        notes.append("features come from a random-init network, not MedicalNet's trained weights: use these numbers "
                     "only to rank models evaluated the same way, never to compare with published values")
    n = min(protocol.get("n_real", 0) or 0, protocol.get("n_fake", 0) or 0)
    dim = protocol.get("feature_dim")
    if dim and n and n < dim:
        notes.append(f"N = {n} volumes is below the feature dimension {dim}: FID is biased upwards and only "
                     "comparable at equal N")
    return notes


def metric_rows(result: dict, floor: dict | None = None) -> list[MetricRow]:
    """The described metrics present in ``result``, in table order, with their references and warnings."""
    features = tuple(feature_warnings(result))
    rows = []
    for info in METRICS.values():
        value = lookup(result, info.key)
        if value is None:
            continue
        reference = lookup(result, info.real_key) if info.reference == "real" and info.real_key else lookup(floor, info.key)
        rows.append(MetricRow(info, value, reference, features if info.uses_features else ()))
    return rows


def undescribed(result: dict, prefix: str = "") -> dict[str, float]:
    """Numeric results no :data:`METRICS` entry describes (settings and the protocol left out)."""
    found: dict[str, float] = {}
    for key, value in result.items():
        path = prefix + key
        if key == "protocol" or key in SETTINGS:
            continue
        if isinstance(value, dict):
            found.update(undescribed(value, path + "."))
        elif path not in METRICS and path not in REAL_KEYS and lookup(result, key) is not None:
            found[path] = float(value)
    return found


def metric_lines(result: dict, floor: dict | None = None, intervals: dict | None = None, prefix: str = "") -> list[str]:
    """One line per described metric in ``result``: value [95% interval], its better direction, its reference.

    ``prefix``: the part of the described keys ``result`` is nested under (``"offline."`` for the result of
    :func:`prdit.evaluation.offline.compare_statistics`); ``intervals`` and ``floor`` use the same unprefixed keys.
    """
    lines = []
    for info in METRICS.values():
        if not info.key.startswith(prefix):
            continue
        key = info.key[len(prefix):]
        value = lookup(result, key)
        if value is None:
            continue
        text = f"{info.name}: {format_number(value, info.digits)}{' ' + info.unit if info.unit else ''}"
        if intervals and key in intervals:
            text += f" [95% CI {format_number(intervals[key][0], info.digits)}, {format_number(intervals[key][1], info.digits)}]"
        if info.reference == "real" and info.real_key is not None:
            reference = f"real {format_number(lookup(result, info.real_key[len(prefix):]), info.digits)}"
            if floor is not None:  # what a second real set scores: the sampling noise of the comparison
                reference += f", real vs real {format_number(lookup(floor, key), info.digits)}"
        else:
            reference = f"real vs real {format_number(lookup(floor, key), info.digits)}" if floor is not None else "no floor"
        better = "closer to the real value is better" if info.reference == "real" or info.better != "match" else "closer to the real-vs-real value is better"
        lines.append(f"{text}  ({BETTER_WORDS[info.better] if info.better != 'match' else better}; {reference})")
    return lines


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def protocol_summary(result: dict) -> str:
    """The protocol in one line: set sizes, features, normalisation, intensity, volume size and spacing."""
    p = result.get("protocol", {})
    parts = [f"{p.get('n_fake', '?')} generated vs {p.get('n_real', '?')} real volumes"]
    if "weights" in p:
        weights = "random-init features" if str(p["weights"]).startswith("random-init") else p["weights"]
        parts.append(f"{p.get('feature_dim', '?')}-d MedicalNet features ({weights}, normalisation {p.get('normalization', '?')})")
    if p.get("image_size"):
        size = "×".join(str(s) for s in p["image_size"])
        spacing = p.get("spacing_mm")
        parts.append(f"{size} voxels" + (f" at {'×'.join(f'{s:g}' for s in spacing)} mm" if spacing else ""))
    if p.get("intensity"):
        parts.append(str(p["intensity"]))
    return "; ".join(parts)


def markdown_table(results: dict[str, dict], floor: dict | None = None) -> list[str]:
    """A Markdown metrics table: one row per described metric, one column per result, the reference last.

    Below it: the better direction's legend, each result's protocol line, the warnings, and undescribed numbers.
    """
    sets = list(results)
    rows = {name: {row.info.key: row for row in metric_rows(result, floor)} for name, result in results.items()}
    keys = [key for key in METRICS if any(key in r for r in rows.values())]
    lines = ["| metric | better | " + " | ".join(f"`{s}`" for s in sets) + " | real vs real |",
             "|---|:-:|" + "--:|" * len(sets) + "--:|"]
    for key in keys:
        info = METRICS[key]
        cells = [format_number(rows[s][key].value, info.digits) if key in rows[s] else "–" for s in sets]
        references = [rows[s][key].reference for s in sets if key in rows[s] and rows[s][key].reference is not None]
        unit = f" ({info.unit})" if info.unit else ""
        flag = " ⚠" if any(rows[s][key].warnings for s in sets if key in rows[s]) else ""
        lines.append(f"| {info.name}{unit}{flag} | {ARROWS[info.better]} | " + " | ".join(cells)
                     + f" | {format_number(references[0], info.digits) if references else '–'} |")
    lines += ["", "↓ lower is better, ↑ higher is better, ≈ closer to the real value is better. Real vs real: "
              f"for ↓ metrics {SPLIT_HALF} (a perfect generator's value); for ≈ metrics {REAL_VALUE}.", ""]
    for name, result in results.items():
        lines.append(f"- Protocol of `{name}`: {protocol_summary(result)}.")
    warnings = sorted({w for result in results.values() for w in feature_warnings(result)})
    lines += [f"- ⚠ FID/MMD: {w}." for w in warnings]
    extra = {name: undescribed(result) for name, result in results.items()}
    if any(extra.values()):
        lines += ["", "<details><summary>Other numbers</summary>", ""]
        for name, numbers in extra.items():
            lines += [f"- `{name}`: " + ", ".join(f"`{k}` = {format_number(v, 4)}" for k, v in numbers.items())]
        lines += ["", "</details>"]
    return lines
