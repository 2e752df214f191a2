"""Procedural chest-CT phantoms in Hounsfield units: prdit's embedded default dataset (no download needed).

Each phantom is drawn from a seeded random anatomy (:class:`ChestAnatomy`): a body with skin and subcutaneous
fat, a rib cage whose size and rib spacing vary, two lungs with apical domes, diaphragm domes and a gravity
gradient, a heart whose size, position and rotation vary, the aorta, trachea and branching bronchi, branching
pulmonary vessels, a segmented vertebral column with posterior elements, ribs with costal cartilage, the
sternum, the liver, an optional gastric air bubble, optional lung nodules (3-30 mm, any count including none)
and the scanner table. The label volume is turned into HU, blurred by a small point-spread function and given
CT-like correlated noise.

Geometry follows the prdit convention: arrays ``[z, y, x]`` in LPS (x -> patient left, y -> posterior,
z -> superior), so ``vol[k]`` displays as a radiology axial slice. Anatomy is built in millimetres on the
voxel-centre grid, so the same seed gives the same patient at every size; the default spacing fits a
360 mm field of view. Shapes are implicit functions evaluated on broadcast coordinate grids (only +, -, *, /
and sqrt touch the grid: correctly rounded, so no libm differences between machines), tubes are unions of
balls splatted along centre lines, and all randomness comes from ``numpy.random.Generator(PCG64)`` streams
spawned from the seed: the same (size, seed, spacing) gives the same bytes.
"""

from __future__ import annotations

import functools
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from prdit.data.conditions import LABELS_DIR, LABELS_FILE, PHANTOM_LABELS
from prdit.errors import PrditError
from prdit.io import atomic_write_text, ensure_writable, save_nifti

FIELD_OF_VIEW_MM = 360.0
MIN_SIZE, MAX_SIZE = 32, 256

#: Tissue classes of the label volume (``generate_phantom(..., return_labels=True)``).
TISSUE_LABELS: dict[str, int] = {
    "air": 0,  # outside the body
    "fat": 1,  # subcutaneous and pericardial fat
    "soft_tissue": 2,  # muscle, skin, mediastinum, spinal canal, discs, airway walls
    "lung": 3,  # parenchyma, denser posteriorly (gravity gradient)
    "airway": 4,  # trachea and bronchial lumen
    "vessel": 5,  # aorta and pulmonary vessels (unenhanced blood)
    "heart": 6,
    "liver": 7,
    "cancellous": 8,  # trabecular bone of vertebrae, ribs and sternum
    "cortical": 9,  # bone shell
    "cartilage": 10,  # costal cartilage
    "nodule": 11,  # solid lung nodules, 3-30 mm
    "gas": 12,  # gastric air bubble
    "table_shell": 13,  # carbon-fibre skin of the scanner table
    "table_foam": 14,  # foam core of the scanner table
}

#: HU interval each tissue's noise-free value lies in (per-seed base values are drawn inside it).
TISSUE_HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-120.0, -80.0),
    "soft_tissue": (20.0, 60.0),
    "lung": (-950.0, -750.0),
    "airway": (-1000.0, -1000.0),
    "vessel": (25.0, 60.0),
    "heart": (25.0, 60.0),
    "liver": (45.0, 75.0),
    "cancellous": (150.0, 350.0),
    "cortical": (700.0, 1000.0),
    "cartilage": (80.0, 200.0),
    "nodule": (-50.0, 50.0),
    "gas": (-1000.0, -1000.0),
    "table_shell": (100.0, 300.0),
    "table_foam": (-900.0, -700.0),
}

#: Cortical bone as dense as in real CT (compact bone of adult ribs and vertebrae reads 1000-1900 HU), for
#: ``dense_bone=True``. The default range stays below 1000 HU so that the fixed [-1000, 1000] window of the
#: shipped phantom model does not clip it.
DENSE_CORTICAL_HU = (1200.0, 1900.0)

#: Phantom tissue class (:data:`prdit.data.phantom.TISSUE_LABELS`) -> label name; unlisted classes are outside
#: the body (air, the scanner table) and get 0. Nodules, cartilage, liver and gastric gas are body tissue.
PHANTOM_TISSUE_TO_LABEL: dict[str, str] = {
    "fat": "fat", "soft_tissue": "body", "lung": "lung", "airway": "airway", "vessel": "vessel", "heart": "heart",
    "liver": "body", "cancellous": "bone", "cortical": "bone", "cartilage": "body", "nodule": "body", "gas": "body",
}


def phantom_label_map(tissues: np.ndarray) -> np.ndarray:
    """The uint8 label map (:data:`PHANTOM_LABELS`) of a phantom's tissue-class volume."""
    lookup = np.zeros(max(TISSUE_LABELS.values()) + 1, dtype=np.uint8)
    for tissue, name in PHANTOM_TISSUE_TO_LABEL.items():
        lookup[TISSUE_LABELS[tissue]] = PHANTOM_LABELS[name]
    return lookup[tissues]


L = TISSUE_LABELS  # short alias for the label assignments below
_STREAMS = ("anatomy", "tissue", "airways", "vessels", "nodules", "noise")


def default_spacing(size: int) -> float:
    """Isotropic spacing (mm) that fits the whole chest (a 360 mm field of view) into ``size`` voxels."""
    return FIELD_OF_VIEW_MM / size


# ----------------------------------------------------------------------------------------------------------
# Anatomy parameters
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChestAnatomy:
    """The random parameters of one phantom patient (millimetres, LPS, origin at the volume centre)."""

    cage_a: float  # rib-cage half width
    cage_b: float  # rib-cage half depth (anterior-posterior)
    cage_square: float  # 0: elliptic cross-section, 1: rounded square
    muscle_lateral: float
    muscle_anterior: float
    muscle_posterior: float  # posterior chest wall lateral to the spine
    paraspinal: tuple[float, float]  # (depth behind the cage, half width) of the paraspinal muscles
    fat: float  # subcutaneous fat thickness
    body_square: float
    table_gap: float
    table_thickness: float
    table_radius: float  # curvature radius of the cradle
    widest_z: float  # level where the thorax is widest; the lung apices dome above it
    apex_z: float
    dome_right_z: float  # peak of the right hemidiaphragm (higher than the left: the liver)
    dome_left_z: float
    dome_depth: float  # how far the costophrenic recesses reach below the domes
    mediastinum_half_width: float
    heart_center: tuple[float, float, float]  # (z, y, x); y relative to the rib-cage centre
    heart_axes: tuple[float, float, float]  # semi-axes along the long axis, then the two short ones
    heart_yaw: float  # radians, long axis from +x towards anterior
    heart_tilt: float  # radians, long axis towards inferior
    pericardial_fat: float
    aorta_radius: float
    arch_z: float
    trachea_radius: float
    carina_z: float
    vertebra_pitch: float  # also the rib spacing
    vertebra_radii: tuple[float, float]  # (y, x) semi-axes of the vertebral bodies
    rib_top_z: float  # posterior height of the first rib
    rib_drop: float  # how far a rib descends from its posterior to its anterior end
    rib_radii: tuple[float, float]  # (height, thickness) semi-axes of a rib
    scapula_z: tuple[float, float]  # inferior angle and top of the shoulder blades
    clavicle_radius: float
    lung_gravity_hu: float
    noise_hu: float
    gastric_bubble: bool


def sample_anatomy(rng: np.random.Generator) -> ChestAnatomy:
    """Draw one anatomy; every dimension varies across seeds within adult ranges."""
    u = rng.uniform
    dome_right = u(-70.0, -45.0)
    widest = u(-30.0, 0.0)
    return ChestAnatomy(
        cage_a=u(115.0, 140.0),
        cage_b=u(80.0, 98.0),
        cage_square=u(0.0, 0.35),
        muscle_lateral=u(5.0, 10.0),
        muscle_anterior=u(6.0, 14.0),
        muscle_posterior=u(18.0, 28.0),
        paraspinal=(u(32.0, 42.0), u(75.0, 95.0)),
        fat=u(5.0, 20.0),
        body_square=u(0.15, 0.6),
        table_gap=u(2.0, 12.0),
        table_thickness=u(18.0, 30.0),
        table_radius=u(500.0, 900.0),
        widest_z=widest,
        apex_z=u(130.0, 150.0),
        dome_right_z=dome_right,
        dome_left_z=dome_right - u(5.0, 20.0),
        dome_depth=u(40.0, 65.0),
        mediastinum_half_width=u(10.0, 18.0),
        heart_center=(dome_right + u(25.0, 40.0), -u(25.0, 40.0), u(20.0, 40.0)),
        heart_axes=(u(50.0, 62.0), u(36.0, 45.0), u(38.0, 47.0)),
        heart_yaw=math.radians(u(25.0, 45.0)),
        heart_tilt=math.radians(u(15.0, 30.0)),
        pericardial_fat=u(2.0, 6.0),
        aorta_radius=u(11.0, 15.0),
        arch_z=u(55.0, 80.0),
        trachea_radius=u(7.5, 10.0),
        carina_z=u(25.0, 45.0),
        vertebra_pitch=u(21.0, 27.0),
        vertebra_radii=(u(14.0, 18.0), u(18.0, 23.0)),
        rib_top_z=u(105.0, 125.0),
        rib_drop=u(70.0, 100.0),
        rib_radii=(u(5.0, 7.0), u(3.0, 4.0)),
        scapula_z=(u(-20.0, 20.0), u(130.0, 150.0)),
        clavicle_radius=u(5.0, 7.5),
        lung_gravity_hu=u(20.0, 50.0),
        noise_hu=u(10.0, 20.0),
        gastric_bubble=bool(rng.random() < 0.6),
    )


def sample_tissue_hu(rng: np.random.Generator, dense_bone: bool = False) -> np.ndarray:
    """Per-seed base HU of each label (lookup table indexed by label), inside :data:`TISSUE_HU_RANGES`.

    ``dense_bone`` draws cortical bone from :data:`DENSE_CORTICAL_HU` instead (the same random numbers are used,
    so every other tissue keeps its value).
    """
    lut = np.zeros(len(TISSUE_LABELS), dtype=np.float32)
    narrow = {"lung": (-870.0, -830.0)}  # the gravity gradient adds +-50 HU around the lung base value
    if dense_bone:
        narrow["cortical"] = DENSE_CORTICAL_HU
    for name, index in TISSUE_LABELS.items():
        low, high = narrow.get(name, TISSUE_HU_RANGES[name])
        margin = 0.15 * (high - low)
        lut[index] = low if high == low else rng.uniform(low + margin, high - margin)
    return lut


# ----------------------------------------------------------------------------------------------------------
# Grid helpers
# ----------------------------------------------------------------------------------------------------------


class _Grid:
    """Voxel-centre coordinates (mm) of a [D, H, W] volume centred on the origin, as broadcastable axes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing)]
        self.z = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.x = axes[2][None, None, :]
        self.y2 = axes[1][:, None]  # axial-plane (H, W) versions
        self.x2 = axes[2][None, :]

    def to_index(self, points_zyx: np.ndarray) -> np.ndarray:
        """Fractional voxel indices of points given in mm."""
        return points_zyx / self.spacing + (np.asarray(self.shape) - 1) / 2

    def lookup(self, mask: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
        """``mask`` at the voxels nearest to the points; False outside the volume."""
        index = np.rint(self.to_index(points_zyx)).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(self.shape)), axis=1)
        result = np.zeros(len(points_zyx), dtype=bool)
        result[inside] = mask[tuple(index[inside].T)]
        return result


def _squircle4(u: np.ndarray, v: np.ndarray, square: float | np.ndarray) -> np.ndarray:
    """Fourth power of a norm blending the circle (square=0) and the L4 rounded square (square=1).

    A convex combination of convex functions: the level sets stay convex, and it is homogeneous, so the norm of
    ``p / k`` is the norm of ``p`` divided by ``k``.
    """
    u2, v2 = u * u, v * v
    return (1.0 - square) * (u2 + v2) ** 2 + square * (u2 * u2 + v2 * v2)


def _splat_balls(grid: _Grid, centers_zyx: np.ndarray, radii: np.ndarray, chunk_voxels: int = 1 << 22) -> np.ndarray:
    """Union of balls (mm) as a boolean volume: tubes are balls swept along densely sampled centre lines.

    Radii below half a voxel are drawn as half a voxel (the centre-line voxel), so thin vessels stay visible
    the way partial volume makes them visible on CT.
    """
    mask = np.zeros(grid.shape, dtype=bool)
    if len(centers_zyx) == 0:
        return mask
    smallest = float(grid.spacing.min())
    radii = np.maximum(radii, 0.5 * smallest)
    reach = np.ceil(radii[:, None] / grid.spacing[None, :]).astype(np.int64)  # per-axis box half size
    groups = reach[:, 0] * 10_000 + reach[:, 1] * 100 + reach[:, 2]
    for key in np.unique(groups):
        members = np.flatnonzero(groups == key)
        kz, ky, kx = reach[members[0]]
        offsets = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in (kz, ky, kx)), indexing="ij"), -1).reshape(-1, 3)
        per_chunk = max(1, chunk_voxels // len(offsets))
        for start in range(0, len(members), per_chunk):
            chosen = members[start : start + per_chunk]
            exact = grid.to_index(centers_zyx[chosen])
            candidates = np.rint(exact).astype(np.int64)[:, None, :] + offsets[None]
            distance2 = (((candidates - exact[:, None, :]) * grid.spacing) ** 2).sum(-1)
            hit = (distance2 <= radii[chosen, None] ** 2) & np.all((candidates >= 0) & (candidates < grid.shape), axis=-1)
            mask[tuple(candidates[hit].T)] = True
    return mask


def _ball_step(radii: np.ndarray | float, voxel: float) -> np.ndarray:
    """Centre-line sampling step for a union of balls: 0.3 radius keeps the scalloping under 1.2% of it."""
    return 0.3 * np.maximum(radii, 0.5 * voxel)


def _sample_segments(starts: np.ndarray, ends: np.ndarray, radii: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along straight segments, every :func:`_ball_step` of the segment's radius, with that radius."""
    lengths = np.linalg.norm(ends - starts, axis=1)
    steps = _ball_step(radii, voxel)
    counts = np.ceil(lengths / steps).astype(np.int64) + 1
    segment = np.repeat(np.arange(len(starts)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(counts.sum()) - first) / np.repeat(np.maximum(counts - 1, 1), counts)
    return starts[segment] + t[:, None] * (ends - starts)[segment], radii[segment]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _grow_tree(
    rng: np.random.Generator,
    roots: np.ndarray,
    directions: np.ndarray,
    radii: np.ndarray,
    inside,
    min_radius: float,
    length_per_radius: tuple[float, float],
    free_generations: int = 1,
    max_generations: int = 14,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow binary branching trees generation by generation; returns segment (starts, ends, radii).

    Each branch splits into a major and a minor child turned to opposite sides of a random plane, with radii
    shrinking as in Murray-like bronchial and vascular trees. Branches whose end leaves the lung (``inside``,
    checked after ``free_generations`` generations that start in the mediastinum) stop growing.
    """
    starts, ends, widths = [], [], []
    origin = roots.copy()
    position, direction, radius, anchor = roots, _unit(directions), radii, origin
    for generation in range(max_generations):
        if len(position) == 0:
            break
        length = radius * rng.uniform(*length_per_radius, size=len(radius))
        end = position + length[:, None] * direction
        starts.append(position)
        ends.append(end)
        widths.append(radius)
        alive = inside(end) if generation >= free_generations else np.ones(len(end), dtype=bool)
        alive &= radius * 0.8 >= min_radius
        end, direction, radius, anchor = end[alive], direction[alive], radius[alive], anchor[alive]
        count = len(end)
        if count == 0:
            break
        perpendicular = _unit(np.cross(direction, rng.normal(size=(count, 3))))
        spread = _unit(end - anchor)  # keep fanning out from the hilum
        children_directions, children_radii = [], []
        for angle_range, ratio_range, side in (((15.0, 35.0), (0.8, 0.92), 1.0), ((35.0, 65.0), (0.6, 0.8), -1.0)):
            angle = np.radians(rng.uniform(*angle_range, size=count))[:, None]
            turned = np.cos(angle) * direction + side * np.sin(angle) * perpendicular
            children_directions.append(_unit(turned + 0.25 * spread))
            children_radii.append(radius * rng.uniform(*ratio_range, size=count))
        position = np.concatenate([end, end])
        direction = np.concatenate(children_directions)
        radius = np.concatenate(children_radii)
        anchor = np.concatenate([anchor, anchor])
        keep = radius >= min_radius
        position, direction, radius, anchor = position[keep], direction[keep], radius[keep], anchor[keep]
    if not starts:
        empty = np.zeros((0, 3))
        return empty, empty, np.zeros(0)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(widths)


def _spline_points(control_zyx: list[tuple[float, float, float]], control_radii: list[float], step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a smooth curve through control points, radii interpolated linearly."""
    control = np.asarray(control_zyx, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    curve = CubicSpline(chord, control, bc_type="natural")
    t = np.linspace(0.0, chord[-1], int(np.ceil(chord[-1] / step)) + 1)
    return curve(t), np.interp(t, chord, control_radii)


# ----------------------------------------------------------------------------------------------------------
# The phantom
# ----------------------------------------------------------------------------------------------------------


def _validate(size: int, seed: int, spacing_mm: float | None) -> float:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise PrditError(f"phantom size {size!r} is out of range: use an integer from {MIN_SIZE} to {MAX_SIZE} voxels per side")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PrditError(f"phantom seed {seed!r} must be a non-negative integer")
    if spacing_mm is None:
        return default_spacing(int(size))
    if not isinstance(spacing_mm, (int, float, np.floating, np.integer)) or not math.isfinite(spacing_mm) or spacing_mm <= 0:
        raise PrditError(f"phantom spacing {spacing_mm!r} mm must be a positive number (or None for the {FIELD_OF_VIEW_MM:.0f} mm default field of view)")
    return float(spacing_mm)


def generate_phantom(
    size: int,
    seed: int,
    spacing_mm: float | None = None,
    nodules: bool = True,
    noise: bool = True,
    return_labels: bool = False,
    dense_bone: bool = False,
):
    """A procedural chest CT: ``(volume, spacing)`` or ``(volume, spacing, labels)`` with ``return_labels``.

    ``volume`` is float32 ``[size, size, size]`` in HU (LPS ``[z, y, x]``), ``spacing`` is ``(sz, sy, sx)`` mm
    (isotropic; default :func:`default_spacing`, a 360 mm field of view) and ``labels`` is uint8 with the
    classes of :data:`TISSUE_LABELS`. ``noise=False`` leaves out the correlated noise (the point-spread blur
    stays, so boundary voxels mix their neighbours' values); ``nodules=False`` draws no lung nodules;
    ``dense_bone=True`` makes cortical bone 1200-1900 HU (:data:`DENSE_CORTICAL_HU`) instead of 700-1000 HU.
    """
    spacing_value = _validate(size, seed, spacing_mm)
    size = int(size)
    spacing = (spacing_value,) * 3
    # One independent stream per component, so that e.g. the nodules or the noise do not shift with how many
    # random numbers the resolution-dependent vessel trees consumed.
    streams = dict(zip(_STREAMS, (np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(int(seed)).spawn(len(_STREAMS)))))
    anatomy = sample_anatomy(streams["anatomy"])
    tissue_hu = sample_tissue_hu(streams["tissue"], dense_bone)
    grid = _Grid((size, size, size), spacing)
    labels = _draw_anatomy(grid, anatomy, streams, nodules)

    volume = tissue_hu[labels]
    # Lung parenchyma is denser in the dependent (posterior) part of a supine patient.
    a = anatomy
    center_y = _body_center_y(a)
    gravity = np.clip((grid.y - center_y) / a.cage_b, -1.0, 1.0) * np.float32(a.lung_gravity_hu)
    lung = labels == L["lung"]
    volume[lung] += np.broadcast_to(gravity, volume.shape)[lung]
    # Scanner point-spread function (and the partial-volume averaging of a coarse grid).
    volume = ndimage.gaussian_filter(volume, sigma=0.5, mode="nearest", truncate=3.0)
    if noise:
        # Reconstructed CT noise is spatially correlated: low-pass filtered white noise, rescaled to the target std.
        white = streams["noise"].standard_normal(volume.shape, dtype=np.float32)
        correlated = ndimage.gaussian_filter(white, sigma=0.8, mode="wrap", truncate=3.0)
        volume += correlated * np.float32(a.noise_hu / correlated.std(dtype=np.float64))
    np.clip(volume, -1024.0, 3071.0, out=volume)
    volume = volume.astype(np.float32, copy=False)
    if return_labels:
        return volume, spacing, labels
    return volume, spacing


def _body_center_y(a: ChestAnatomy) -> float:
    """y of the rib-cage centre that centres body plus table in the field of view."""
    anterior = a.cage_b + a.muscle_anterior + a.fat
    posterior = _body_back(a) + a.table_gap + a.table_thickness
    return (anterior - posterior) / 2


def _body_back(a: ChestAnatomy) -> float:
    """Posterior extent of the body behind the rib-cage centre (the paraspinal muscles stick out most)."""
    return a.cage_b + max(a.muscle_posterior, a.paraspinal[0]) + a.fat


@dataclass
class _Axial:
    """The frame every organ is drawn in: the grid, the anatomy, and axial-plane coordinates (mm) relative to the
    rib-cage centre, which sits ``cy`` mm off the field's centre so that body and table fit."""

    grid: _Grid
    a: ChestAnatomy
    cy: float
    yy: np.ndarray  # [H, W] y - cy
    xx: np.ndarray  # [H, W] x
    radius: np.ndarray  # [H, W] distance from the rib-cage centre (never 0)
    voxel: float  # the finest spacing

    @property
    def around(self) -> np.ndarray:
        """0 at the posterior midline, 1 at the anterior midline."""
        return (1.0 - self.yy / self.radius) / 2.0


@dataclass
class _Body:
    outline: np.ndarray  # [H, W] inside the skin surface
    fat: np.ndarray  # [H, W] the subcutaneous fat layer
    half_width: float
    under_skin: np.ndarray  # [H, W] mm from the trunk surface inwards, along the ray from the centre


@dataclass
class _Spine:
    bone: np.ndarray  # [D, H, W]
    disc: np.ndarray  # [D, H, W]
    paravertebral: np.ndarray  # [H, W] the column the lungs wrap around
    body_y: float  # y of the vertebral bodies' centre, relative to the rib-cage centre


def _axial_frame(grid: _Grid, a: ChestAnatomy) -> _Axial:
    cy = _body_center_y(a)
    yy, xx = grid.y2 - np.float32(cy), grid.x2
    radius = np.sqrt(xx**2 + yy**2) + np.float32(1e-3)
    return _Axial(grid, a, cy, yy, xx, radius, float(grid.spacing.min()))


def _table(f: _Axial) -> tuple[np.ndarray, np.ndarray]:
    """A curved cradle under the patient: (carbon shell, foam core) in the axial plane."""
    grid, a = f.grid, f.a
    top = f.cy + _body_back(a) + a.table_gap - grid.x2**2 / np.float32(2 * a.table_radius)
    shell = max(2.0, float(grid.spacing[1]))  # at least one voxel, so the shell never breaks up
    table = (grid.y2 >= top) & (grid.y2 <= top + a.table_thickness)
    foam = (grid.y2 >= top + shell) & (grid.y2 <= top + a.table_thickness - shell)
    return table, foam


def _body(f: _Axial) -> _Body:
    """Skin, subcutaneous fat and muscle: the same cross-section at every level, flatter at the back on the table."""
    a, xx, yy = f.a, f.xx, f.yy
    half_width = a.cage_a + a.muscle_lateral + a.fat
    half_depth = np.where(yy < 0, a.cage_b + a.muscle_anterior + a.fat, a.cage_b + a.muscle_posterior + a.fat).astype(np.float32)
    square = np.where(yy < 0, a.body_square, min(1.0, a.body_square + 0.2)).astype(np.float32)
    depth, spread = a.paraspinal

    def body_level(inset: float) -> np.ndarray:
        trunk = _squircle4(xx / np.float32(half_width - inset), yy / (half_depth - np.float32(inset)), square) <= 1.0
        back = (xx / np.float32(spread - inset)) ** 2 + ((yy - np.float32(a.cage_b - 10.0)) / np.float32(depth + 10.0 + a.fat - inset)) ** 2 <= 1.0
        return trunk | back

    outline, fat_inner, skin_inner = body_level(0.0), body_level(a.fat + 1.5), body_level(1.5)
    trunk_norm = np.sqrt(np.sqrt(_squircle4(xx / np.float32(half_width), yy / half_depth, square)))
    return _Body(outline, skin_inner & ~fat_inner, half_width, f.radius / trunk_norm - f.radius)


def _outside_cage(f: _Axial) -> np.ndarray:
    """[D, H, W] radial distance (mm) outside the rib-cage surface, which narrows above ``widest_z``."""
    a = f.a
    norm = np.sqrt(np.sqrt(_squircle4(f.xx / np.float32(a.cage_a), f.yy / np.float32(a.cage_b), np.float32(a.cage_square))))
    surface_radius = f.radius / norm  # centre -> unit cage surface along the ray through each voxel
    t = np.clip((f.grid.z[:, 0, 0] - a.widest_z) / (a.apex_z - a.widest_z), 0.0, 1.0)
    cage_scale = ((0.45 + 0.6 * np.sqrt(1.0 - t * t)) / 1.05).astype(np.float32)[:, None, None]
    return f.radius[None] - cage_scale * surface_radius[None]


def _diaphragm(f: _Axial) -> np.ndarray:
    """[H, W] height (z, mm) of the diaphragm: two domes (right higher) blended across the midline, deeper
    recesses laterally and posteriorly."""
    a, xx, yy = f.a, f.xx, f.yy

    def dome(peak: float, side_x: float) -> np.ndarray:
        lateral = ((xx - np.float32(side_x)) / np.float32(0.6 * a.cage_a)) ** 2
        depth = ((yy + np.float32(0.15 * a.cage_b)) / np.float32(a.cage_b)) ** 2
        return np.float32(peak) - np.float32(a.dome_depth) * np.minimum(1.0, lateral + depth)

    blend = np.clip(0.5 + xx / 30.0, 0.0, 1.0)
    diaphragm = (1 - blend) * dome(a.dome_right_z, -0.45 * a.cage_a) + blend * dome(a.dome_left_z, 0.45 * a.cage_a)
    return diaphragm.astype(np.float32)


def _pleural_cavity(f: _Axial, outside_cage: np.ndarray, diaphragm: np.ndarray) -> np.ndarray:
    """Inside the cage, above the diaphragm, and under the apical domes (each lung rounds off above ``widest_z``)."""
    a, xx, yy, z = f.a, f.xx, f.yy, f.grid.z
    height = a.apex_z - a.widest_z
    up = np.maximum(z - np.float32(a.widest_z), 0.0) / np.float32(height)
    apex_ok = np.zeros(f.grid.shape, dtype=bool)
    for side in (-1.0, 1.0):
        across = ((xx - np.float32(side * 0.45 * a.cage_a)) / np.float32(0.6 * a.cage_a)) ** 2 + (yy / np.float32(1.1 * a.cage_b)) ** 2
        apex_ok |= across[None] + up * up <= 1.0
    return (outside_cage <= 0) & (z > diaphragm[None]) & apex_ok


def _heart(f: _Axial) -> tuple[np.ndarray, np.ndarray]:
    """A rotated ellipsoid pointing anterior-left-inferior, and the same grown by the pericardial fat."""
    a = f.a
    hz, hy, hx = a.heart_center
    cos_yaw, sin_yaw, cos_tilt, sin_tilt = math.cos(a.heart_yaw), math.sin(a.heart_yaw), math.cos(a.heart_tilt), math.sin(a.heart_tilt)
    long_axis = np.array([-sin_tilt, -sin_yaw * cos_tilt, cos_yaw * cos_tilt])  # (z, y, x): down, anterior, left
    second = _unit(np.cross(long_axis, [1.0, 0.0, 0.0]))
    third = np.cross(long_axis, second)
    dz, dy, dx = f.grid.z - np.float32(hz), f.yy[None] - np.float32(hy), f.xx[None] - np.float32(hx)

    def heart_level(grow: float) -> np.ndarray:
        axes = zip((long_axis, second, third), a.heart_axes)
        return sum(((dz * np.float32(e[0]) + dy * np.float32(e[1]) + dx * np.float32(e[2])) / np.float32(semi + grow)) ** 2 for e, semi in axes) <= 1.0

    return heart_level(0.0), heart_level(a.pericardial_fat)


def _spine(f: _Axial) -> _Spine:
    """Vertebral bodies separated by discs, canal and posterior arch, transverse and spinous processes."""
    a, xx, yy, grid = f.a, f.xx, f.yy, f.grid
    ry, rx = a.vertebra_radii
    body_y = a.cage_b - ry - 5.0
    canal_y, canal_r = a.cage_b + 3.0, 8.0
    phase = np.mod(grid.z[:, 0, 0] - a.rib_top_z, a.vertebra_pitch) / a.vertebra_pitch
    is_bone_level = (phase > 0.18)[:, None, None]  # the rest is the disc
    has_arch = ((phase > 0.3) & (phase < 0.85))[:, None, None]
    vertebral_body = ((xx / rx) ** 2 + ((yy - body_y) / ry) ** 2 <= 1.0)[None]
    canal_d2 = xx**2 + (yy - canal_y) ** 2
    arch = (canal_d2 <= (canal_r + 5.0) ** 2) & (canal_d2 > canal_r**2) & (yy > canal_y - 3.0)
    processes = ((np.abs(xx) <= 4.0) & (yy >= canal_y) & (yy <= canal_y + 40.0)) | (
        (np.abs(yy - canal_y) <= 4.5) & (np.abs(xx) <= rx + 20.0)
    )
    bone = (vertebral_body & is_bone_level) | ((arch | processes)[None] & has_arch)
    paravertebral = (np.abs(xx) <= rx + 8.0) & (yy >= body_y - ry - 4.0)
    return _Spine(bone, vertebral_body & ~is_bone_level, paravertebral, body_y)


def _aorta(f: _Axial, spine: _Spine) -> tuple[np.ndarray, np.ndarray]:
    """Ascending in front, arching over the left bronchus, descending left-anterior of the spine; and its
    4 mm margin (mediastinal tissue the lungs keep clear of)."""
    a, cy = f.a, f.cy
    ry, rx = a.vertebra_radii
    hz = a.heart_center[0]
    descending = (cy + spine.body_y - 0.8 * ry, rx * 0.9 + a.aorta_radius * 0.8)
    aorta_pts, aorta_r = _spline_points(
        [
            (hz + 0.5 * a.heart_axes[2], cy - 0.3 * a.cage_b, 2.0),
            (a.arch_z - 15.0, cy - 0.35 * a.cage_b, -2.0),
            (a.arch_z, cy + 0.1 * a.cage_b, 12.0),
            (a.arch_z - 18.0, descending[0] - 4.0, descending[1]),
            (a.dome_left_z - 20.0, descending[0], descending[1]),
            (-FIELD_OF_VIEW_MM, descending[0] - 5.0, 0.4 * descending[1]),
        ],
        [a.aorta_radius, a.aorta_radius, a.aorta_radius * 0.92, a.aorta_radius * 0.85, a.aorta_radius * 0.8, a.aorta_radius * 0.75],
        float(_ball_step(a.aorta_radius * 0.75, f.voxel)),
    )
    return _splat_balls(f.grid, aorta_pts, aorta_r), _splat_balls(f.grid, aorta_pts, aorta_r + 4.0)


def _upper_abdomen(f: _Axial, diaphragm: np.ndarray, outside_cage: np.ndarray, spine: _Spine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Below the diaphragm: (liver on the right, stomach, its gas above the air-fluid level of a supine patient);
    the stomach is empty when the anatomy has no gastric bubble."""
    a, z, y, x, xx, yy, cy = f.a, f.grid.z, f.grid.y, f.grid.x, f.xx, f.yy, f.cy
    below = (z < diaphragm[None] - 3.0) & ((outside_cage - 4.0) <= 0) & ~spine.paravertebral[None]
    liver_shape = (((xx + 0.25 * a.cage_a) / (0.85 * a.cage_a)) ** 2 + (yy / (0.95 * a.cage_b)) ** 2)[None] + (
        (z - np.float32(a.dome_right_z - 55.0)) / np.float32(90.0)
    ) ** 2 <= 1.0
    stomach = gas = np.zeros(f.grid.shape, dtype=bool)
    if a.gastric_bubble:
        center = (a.dome_left_z - 30.0, cy - 0.25 * a.cage_b, 0.5 * a.cage_a)
        stomach = (
            (z - np.float32(center[0])) ** 2 / 30.0**2 + (y - np.float32(center[1])) ** 2 / 35.0**2 + (x - np.float32(center[2])) ** 2 / 35.0**2
        ) <= 1.0
        stomach &= below & ~liver_shape
        gas = stomach & (z > np.float32(center[0] + 5.0))
    return below & liver_shape, stomach, gas


def _ribs(f: _Axial, outside_cage: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """12 pairs on the cage surface (``offset`` mm outside it), descending anteriorly: (bone, costal cartilage)."""
    a, z = f.a, f.grid.z
    around = f.around
    rib_height, rib_thickness = a.rib_radii
    descent = np.float32(a.rib_drop) * around
    number = np.clip(np.rint((a.rib_top_z - descent[None] - z) / a.vertebra_pitch), 0, 11).astype(np.int64)
    rib_dz = z - (np.float32(a.rib_top_z) - number * np.float32(a.vertebra_pitch) - descent[None])
    on_rib = (rib_dz / rib_height) ** 2 + ((outside_cage - offset) / rib_thickness) ** 2 <= 1.0
    bone_end = np.array([0.78] * 7 + [0.74, 0.7, 0.66, 0.5, 0.4], dtype=np.float32)  # floating ribs end early
    cartilage_end = np.array([0.97] * 7 + [0.88, 0.84, 0.8, 0.5, 0.4], dtype=np.float32)
    bone = on_rib & (around[None] >= 0.07) & (around[None] <= bone_end[number])
    cartilage = on_rib & (around[None] > bone_end[number]) & (around[None] <= cartilage_end[number])
    return bone, cartilage


def _sternum_top(a: ChestAnatomy) -> float:
    return a.rib_top_z - a.rib_drop - 5.0


def _sternum(f: _Axial, outside_cage: np.ndarray, offset: float) -> np.ndarray:
    """Manubrium and body in the anterior midline, between the first and seventh costal cartilages."""
    a, z, grid = f.a, f.grid.z, f.grid
    top = _sternum_top(a)
    bottom = a.rib_top_z - 7 * a.vertebra_pitch - a.rib_drop
    half_width = np.where(grid.z[:, 0, 0] > top - 45.0, 24.0, 14.0).astype(np.float32)[:, None, None]
    return (
        (np.abs(f.xx)[None] <= half_width)
        & (f.yy[None] < 0)
        & (np.abs(outside_cage - offset) <= 6.0)
        & (z <= top)
        & (z >= bottom)
    )


def _shoulder_girdle(f: _Axial, body: _Body) -> tuple[np.ndarray, np.ndarray]:
    """Scapulae on the posterolateral wall (triangular, narrowing downwards), and clavicles from the manubrium
    out to the shoulders."""
    a, z, cy, grid = f.a, f.grid.z, f.cy, f.grid
    around = f.around
    low, high = a.scapula_z
    reach = 0.12 + 0.2 * np.clip((grid.z[:, 0, 0] - low) / (high - low), 0.0, 1.0)
    plate = (body.under_skin >= a.fat + 6.0) & (body.under_skin <= a.fat + 6.0 + max(5.0, f.voxel)) & (around >= 0.1)
    scapula = plate[None] & (around[None] <= reach.astype(np.float32)[:, None, None]) & (z >= low) & (z <= high)
    clavicles = np.zeros(grid.shape, dtype=bool)
    sternum_top = _sternum_top(a)
    for side in (-1.0, 1.0):
        points, point_r = _spline_points(
            [
                (sternum_top + 5.0, cy - 0.95 * a.cage_b, side * 22.0),
                (sternum_top + 22.0, cy - 0.8 * a.cage_b, side * 0.55 * body.half_width),
                (sternum_top + 28.0, cy - 0.2 * a.cage_b, side * 0.9 * body.half_width),
            ],
            [a.clavicle_radius] * 3,
            float(_ball_step(a.clavicle_radius, f.voxel)),
        )
        clavicles |= _splat_balls(grid, points, point_r)
    return scapula, clavicles


def _min_branch_radius(f: _Axial) -> float:
    return max(0.7, 0.5 * f.voxel)


def _airways(f: _Axial, lung: np.ndarray, spine: _Spine, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Trachea, main bronchi (the right one steeper and shorter) and a branching bronchial tree: (lumen, wall)."""
    a = f.a
    ry = a.vertebra_radii[0]
    trachea_y = f.cy + spine.body_y - ry - a.trachea_radius - 10.0
    carina = np.array([a.carina_z, trachea_y, 0.0])
    bronchus_directions = np.array([[-math.cos(0.45), 0.05, -math.sin(0.45)], [-math.cos(0.8), 0.1, math.sin(0.8)]])
    airway_starts, airway_ends, airway_r = _grow_tree(
        rng,
        np.stack([carina, carina]),
        bronchus_directions,
        np.array([0.75, 0.68]) * a.trachea_radius,
        functools.partial(f.grid.lookup, lung),
        _min_branch_radius(f),
        length_per_radius=(3.0, 5.0),
        free_generations=2,  # the main bronchi start in the mediastinum
    )
    trachea_top = np.array([FIELD_OF_VIEW_MM, trachea_y - 8.0, 0.0])  # the trachea runs posteriorly as it descends
    airway_starts = np.concatenate([[trachea_top], airway_starts])
    airway_ends = np.concatenate([[carina], airway_ends])
    airway_r = np.concatenate([[a.trachea_radius], airway_r])
    points, point_r = _sample_segments(airway_starts, airway_ends, airway_r, f.voxel)
    lumen = _splat_balls(f.grid, points, point_r)
    wall = _splat_balls(f.grid, points, point_r * 1.2 + 0.6) & ~lumen
    return lumen, wall


def _pulmonary_vessels(f: _Axial, lung: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arterial trees from each hilum and venous trees from near the left atrium, each root aimed at a random
    point of its lung so that the branches fill the whole lung."""
    a, cy, grid = f.a, f.cy, f.grid
    hz, hy, hx = a.heart_center
    roots, targets = [], []
    for side in (-1.0, 1.0):
        hilum = np.array([a.carina_z - 15.0, cy - 0.05 * a.cage_b, side * (a.mediastinum_half_width + 12.0)])
        atrium = np.array([hz + 10.0, cy + hy + 0.5 * a.heart_axes[1], side * 25.0 + hx * 0.3])
        for origin, count in ((hilum, 7), (atrium, 5)):
            aims = _points_in_lung(grid, a, lung, rng, count, side)
            roots += [origin] * len(aims)
            targets += list(aims)
    roots_array = np.asarray(roots).reshape(-1, 3)
    radii = rng.uniform(4.0, 6.5, size=len(roots_array))
    vessel_starts, vessel_ends, vessel_r = _grow_tree(
        rng, roots_array, np.asarray(targets).reshape(-1, 3) - roots_array, radii, functools.partial(grid.lookup, lung),
        _min_branch_radius(f), length_per_radius=(2.5, 4.5), free_generations=1,
    )
    points, point_r = _sample_segments(vessel_starts, vessel_ends, vessel_r, f.voxel)
    return _splat_balls(grid, points, point_r)


def _draw_anatomy(grid: _Grid, a: ChestAnatomy, streams: dict[str, np.random.Generator], with_nodules: bool) -> np.ndarray:
    """The uint8 label volume, painted from the outside in (later structures overwrite earlier ones)."""
    f = _axial_frame(grid, a)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    table, foam = _table(f)
    labels[:, table] = L["table_shell"]
    labels[:, foam] = L["table_foam"]
    body = _body(f)
    labels[:, body.outline] = L["soft_tissue"]
    labels[:, body.fat] = L["fat"]

    # The lungs fill the pleural cavity up to the mediastinum, heart, aorta and spine.
    outside_cage, diaphragm = _outside_cage(f), _diaphragm(f)
    heart, heart_fat = _heart(f)
    spine = _spine(f)
    aorta, aorta_margin = _aorta(f, spine)
    mediastinum = (np.abs(f.xx) <= a.mediastinum_half_width)[None] | heart_fat | aorta_margin | spine.paravertebral[None]
    lung = _pleural_cavity(f, outside_cage, diaphragm) & ~mediastinum
    labels[lung] = L["lung"]

    liver, stomach, gas = _upper_abdomen(f, diaphragm, outside_cage, spine)
    labels[liver] = L["liver"]
    labels[stomach] = L["soft_tissue"]
    labels[gas] = L["gas"]
    labels[heart_fat & ~heart & ~lung] = L["fat"]
    labels[heart] = L["heart"]
    labels[aorta] = L["vessel"]
    labels[spine.disc] = L["soft_tissue"]

    # Bone: cortical shell (~1.5 mm, at least one voxel) around cancellous bone; costal cartilage stays soft.
    rib_offset = a.rib_radii[1] + 2.0  # ribs sit just outside the pleural cavity
    rib_bone, rib_cartilage = _ribs(f, outside_cage, rib_offset)
    labels[rib_cartilage] = L["cartilage"]
    scapula, clavicles = _shoulder_girdle(f, body)
    bone = spine.bone | rib_bone | _sternum(f, outside_cage, rib_offset) | (scapula & body.outline[None]) | (clavicles & body.outline[None])
    erosions = max(1, int(round(1.5 / float(grid.spacing.min()))))
    core = ndimage.binary_erosion(bone, iterations=erosions, border_value=1)
    labels[bone] = L["cortical"]
    labels[core] = L["cancellous"]

    lumen, wall = _airways(f, lung, spine, streams["airways"])
    airway_region = np.isin(labels, [L["lung"], L["soft_tissue"], L["fat"]])
    labels[wall & (labels == L["lung"])] = L["soft_tissue"]
    labels[lumen & airway_region] = L["airway"]
    vessels = _pulmonary_vessels(f, lung, streams["vessels"])
    labels[vessels & (labels == L["lung"])] = L["vessel"]

    # Nodules: 0-4 solid, lobulated nodules of 3-30 mm anywhere in the lungs (juxtapleural ones included).
    if with_nodules:
        _draw_nodules(grid, a, labels, streams["nodules"])
    return labels


def _points_in_lung(grid: _Grid, a: ChestAnatomy, lung: np.ndarray, rng: np.random.Generator, count: int, side: float = 0.0) -> np.ndarray:
    """Up to ``count`` random points (mm) inside the lung (one side: -1 right, +1 left, 0 either).

    Candidates are drawn in millimetres in the thorax box and kept when inside, so they hardly depend on the size.
    """
    cy = _body_center_y(a)
    low = np.array([a.dome_left_z - a.dome_depth, cy - a.cage_b, -a.cage_a])
    high = np.array([a.apex_z, cy + a.cage_b, a.cage_a])
    if side:
        low[2], high[2] = (0.0, a.cage_a) if side > 0 else (-a.cage_a, 0.0)
    candidates = rng.uniform(low, high, size=(64 * count, 3))
    return candidates[grid.lookup(lung, candidates)][:count]


def _draw_nodules(grid: _Grid, a: ChestAnatomy, labels: np.ndarray, rng: np.random.Generator) -> None:
    count = min(int(rng.poisson(1.2)), 4)
    lung = labels == L["lung"]
    for _ in range(count):
        diameter = math.exp(rng.uniform(math.log(3.0), math.log(30.0)))
        centers = _points_in_lung(grid, a, lung, rng, 1)
        if len(centers) == 0:
            continue
        center = centers[0]
        # Lobulation: the union of a main ball and a few smaller, offset ones.
        lobes = 1 + int(rng.integers(0, 4))
        offsets = rng.normal(size=(lobes, 3))
        offsets = offsets / np.linalg.norm(offsets, axis=1, keepdims=True) * rng.uniform(0.0, 0.35, size=(lobes, 1)) * diameter / 2
        offsets[0] = 0.0
        radii = diameter / 2 * np.concatenate([[1.0], rng.uniform(0.5, 0.8, size=lobes - 1)])
        nodule = _splat_balls(grid, center + offsets, radii)
        labels[nodule & np.isin(labels, [L["lung"], L["vessel"]])] = L["nodule"]


# ----------------------------------------------------------------------------------------------------------
# Dataset on disk
# ----------------------------------------------------------------------------------------------------------


def phantom_file_name(seed: int) -> str:
    return f"phantom_{seed:05d}.nii.gz"


def _write_one(task: tuple[str, int, int, float | None, bool, bool, bool]) -> bool:
    """Generate and write one phantom (and its label map); False when it already existed (and overwrite is off)."""
    path, size, seed, spacing_mm, overwrite, dense_bone, with_labels = task
    label_file = Path(path).parent / LABELS_DIR / Path(path).name
    if not overwrite and Path(path).exists() and (not with_labels or label_file.exists()):
        return False
    volume, spacing, tissues = generate_phantom(size, seed, spacing_mm, dense_bone=dense_bone, return_labels=True)
    save_nifti(path, volume, spacing, dtype=np.int16, overwrite=True)
    if with_labels:
        save_nifti(label_file, phantom_label_map(tissues), spacing, dtype=np.uint8, overwrite=True)
    return True


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num: int,
    size: int,
    seed: int = 0,
    spacing_mm: float | None = None,
    workers: int = 1,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    dense_bone: bool = False,
    labels: bool = False,
) -> dict:
    """Write ``num`` phantoms ``phantom_{seed+i:05d}.nii.gz`` (int16 HU, real affine) plus ``train.txt``/``val.txt``.

    ``labels``: also each phantom's label map ``labels/<name>`` (uint8, same affine) and ``labels.json`` naming
    its values (:data:`prdit.data.conditions.PHANTOM_LABELS`).

    The validation list holds the last ``max(1, round(num * val_fraction))`` volumes when ``num >= 2``.
    Existing volumes are kept (idempotent reruns) unless ``overwrite``. Returns a summary with the number
    ``written`` and ``skipped`` and the ``train`` / ``val`` paths.
    """
    from tqdm import tqdm

    _validate(size, seed, spacing_mm)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise PrditError(f"number of phantoms {num!r} must be a positive integer")
    if not 0.0 <= val_fraction < 1.0:
        raise PrditError(f"val_fraction {val_fraction!r} must be in [0, 1)")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise PrditError(f"workers {workers!r} must be a positive integer")
    out_dir = ensure_writable(out_dir)
    seeds = [seed + i for i in range(num)]
    paths = [out_dir / phantom_file_name(s) for s in seeds]
    tasks = [(str(p), int(size), s, spacing_mm, overwrite, dense_bone, labels) for p, s in zip(paths, seeds)]
    if labels:
        (out_dir / LABELS_DIR).mkdir(exist_ok=True)
        atomic_write_text(out_dir / LABELS_FILE, json.dumps(PHANTOM_LABELS, indent=2) + "\n")
    bar = tqdm(total=num, desc="phantoms", unit="vol", disable=not progress)
    written = 0
    if workers == 1 or num == 1:
        for task in tasks:
            written += _write_one(task)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, num)) as pool:
            for done in pool.map(_write_one, tasks):
                written += done
                bar.update()
    bar.close()
    val_count = max(1, round(num * val_fraction)) if num >= 2 else 0
    train, val = paths[: num - val_count], paths[num - val_count :]
    atomic_write_text(out_dir / "train.txt", "".join(f"{p.name}\n" for p in train))
    atomic_write_text(out_dir / "val.txt", "".join(f"{p.name}\n" for p in val))
    return {"written": written, "skipped": num - written, "train": train, "val": val}
