"""Synthetic 3-D lung-CT image pairs (inhale / exhale) with a known breathing motion.

The generator draws an analytic thorax (body with a thin fat layer, ribs and spine, heart,
trachea and main bronchi, two lungs with textured parenchyma and two branching vessel
trees, arterial and venous, in each lung), renders it as an *inhale* CT image, moves it
with a smooth invertible breathing motion and renders the *exhale* CT image of the moved
anatomy. Landmarks are vessel branch points with exactly known positions in both images.
It is meant for demos, tests and benchmarks of lung registration where DIR-LAB data is not
at hand.

Coordinates
    Everything geometric is in physical RAS+ millimetres: +x towards the patient's Right,
    +y Anterior, +z Superior. A NIfTI affine maps 0-based voxel indices ``(i, j, k)`` to
    ``(x, y, z) = affine @ (i, j, k, 1)``. The default affine (:func:`default_affine`) is
    diagonal, ``diag(spacing)``, so voxel axis 0 runs L->R, axis 1 P->A and axis 2 I->S, with
    the origin chosen so that the centre of the grid is at (0, 0, 0) mm.

Anatomy
    The anatomy is defined analytically in millimetres, centred on the origin and sized from
    the nominal field of view ``fov_mm`` (default ``shape * spacing``; at the default
    256 mm per axis the torso is about 220 mm LR x 165 mm AP x 230 mm SI with air all round).
    Every length scales per axis by ``fov_mm / 256``. Images are rendered by evaluating the
    anatomy at the physical position of every voxel, so any affine (oblique, flipped, other
    spacing; parameters ``affine`` / ``exhale_affine``) shows the same anatomy. Intensities
    are HU-like floats: air -1000, soft tissue and blood +40, fat -100, bone +400, lung
    parenchyma about -850 with a smooth texture (about 15 HU standard deviation) and a mild
    posterior density gradient, plus independent Gaussian noise of ``noise_hu`` per image.
    Edges are blurred by a Gaussian point-spread function of standard deviation
    ``0.45 * (voxel volume) ** (1/3)`` of the grid being rendered (partial-volume look, no
    aliasing); the lung masks are the un-blurred lung region (vessels included).

Motion and correspondence
    The breathing motion is the map ``F: inhale space -> exhale space``,
    ``F(x) = x + d(x)`` (:class:`BreathingMotion`), an analytic, smooth (C-infinity) field
    built from logistic and tanh functions of position: superior (+z) at the diaphragm
    (``motion_mm`` at the dome, times a per-seed factor in [0.8, 1.2]), decreasing to 35-45 %
    of that at the lung apex, somewhat larger posteriorly; posterior (-y) by 30-50 % of the
    SI amplitude at the anterior chest wall; a slight lateral contraction. The mean landmark
    displacement is about 0.83 times the per-seed SI amplitude (10.7 mm for the defaults).
    Its displacement gradient has norm below 0.2 everywhere, so det(dF/dx) > 0.8. The
    anatomy at inhale point ``x`` is found at ``F(x)`` in the exhale image: the exhale image
    is rendered as ``I_ex(y) = A(F^-1(y))`` with ``A`` the analytic inhale anatomy and
    ``F^-1`` computed by fixed-point iteration to 1e-6 mm, and the landmarks are
    ``exhale_points = F(inhale_points)`` (exact). The exhale image keeps the HU values of the
    inhale anatomy (no density change with lung volume).

Registration convention of the project
    The moving image is registered onto the fixed image: moving = exhale, fixed = inhale.
    A registration yields ``phi: fixed space -> moving space`` with ``moving(phi(x)) ~
    fixed(x)``; its ground truth is ``phi = F``, so the fixed (inhale) landmarks mapped by
    ``phi`` should land on the moving (exhale) landmarks. ``LungPair.displacement_fn(x) =
    F(x) - x`` for inhale-space points ``x`` is the true displacement in RAS mm, and
    ``LungPair.displacement_field()`` samples it on the inhale (fixed) grid.

Landmarks
    ``n_landmarks`` points (default 300), preferring vessel branch points (spread over the
    lungs by farthest-point sampling), then points on vessel centrelines when there are too
    few branch points. All lie inside the lung, at least ``0.55 * sqrt(3) * (largest voxel
    size of the two grids) + 0.5`` mm from its boundary, so their nearest voxel is in the lung
    mask of both images.

Files written by :meth:`LungPair.save`
    ``inhale.nii.gz``, ``exhale.nii.gz`` (float32 HU), ``inhale_mask.nii.gz``,
    ``exhale_mask.nii.gz`` (uint8, 1 = lung), ``inhale_points.csv``,
    ``exhale_points.csv`` (header ``x,y,z``, RAS mm, 4 decimals, row n of one file
    corresponds to row n of the other).

Command line: ``python -m data_prep.synthetic_lung --out DIR [--shape 64 64 64]
[--spacing 4 4 4] [--motion-mm 12] [--seed 0] [--n-landmarks 300] [--noise-hu 20]``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np
from scipy.spatial import cKDTree
from scipy.special import erf, erfc, expit


AIR_HU = -1000.0


TISSUE_HU = 40.0


FAT_HU = -100.0


BONE_HU = 400.0


PARENCHYMA_HU = -850.0


VESSEL_HU = 40.0


REFERENCE_FOV_MM = 256.0


PSF_FRACTION = 0.45


TEXTURE_STD_HU = 15.0


GRAVITY_HU = 25.0


_CHUNK = 1 << 20


_SQRT2 = float(np.sqrt(2.0))


def default_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The (4, 4) diagonal voxel -> RAS mm affine of a grid centred on the origin.

    Voxel axis 0 runs L->R (+x), axis 1 P->A (+y), axis 2 I->S (+z); voxel ``(i, j, k)`` is at
    ``spacing * ((i, j, k) - (shape - 1) / 2)`` mm.
    """
    shape_arr = np.asarray(shape, dtype=np.float64)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = -0.5 * (shape_arr - 1.0) * spacing_arr
    return affine


def voxel_centres(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """RAS mm positions (N, 3), N = prod(shape), of all voxels in C order of ``(i, j, k)``."""
    idx = np.indices(tuple(int(s) for s in shape), dtype=np.float64).reshape(3, -1)
    affine = np.asarray(affine, dtype=np.float64)
    return (affine[:3, :3] @ idx).T + affine[:3, 3]


def psf_sigma(affine: np.ndarray) -> float:
    """Standard deviation (mm) of the rendering blur of a grid: 0.45 * voxel volume ** (1/3)."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return PSF_FRACTION * float(np.prod(sizes)) ** (1.0 / 3.0)


def _soft_inside(sd: np.ndarray, sigma: float) -> np.ndarray:
    """Blurred indicator of ``sd < 0``: a Gaussian-smoothed step across the signed distance."""
    return 0.5 * erfc(sd / (_SQRT2 * sigma))


def _ellipse_sd(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (mm) of points (u, v) to the ellipse (u/a)^2 + (v/b)^2 = 1.

    First-order estimate ``F / |grad F|`` of ``F = sqrt((u/a)^2 + (v/b)^2) - 1``: exact on the
    curve, negative inside.
    """
    qa, qb = u / a, v / b
    n = np.hypot(qa, qb)
    g = np.hypot(qa / a, qb / b)
    scale = np.where(g > 1e-12, n / np.maximum(g, 1e-12), min(a, b))
    return (n - 1.0) * scale


def _ellipsoid_sd(rel: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) of offsets ``rel`` (N, 3) to an ellipsoid.

    ``axes`` are the semi-axes, shape (3,) or per point (N, 3); negative inside.
    """
    q = rel / axes
    n = np.sqrt(np.einsum("ij,ij->i", q, q))
    qa = q / axes
    g = np.sqrt(np.einsum("ij,ij->i", qa, qa))
    fallback = np.min(np.broadcast_to(axes, rel.shape), axis=-1)
    scale = np.where(g > 1e-12, n / np.maximum(g, 1e-12), fallback)
    return (n - 1.0) * scale


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum of two signed distances (intersection of the two regions).

    Equals ``max(a, b)`` where they differ by more than ``k`` mm; near the crease it is larger
    by up to ``k / 4``, which blunts the thin wedges where two cut surfaces meet at a small
    angle.
    """
    h = np.maximum(k - np.abs(a - b), 0.0)
    return np.maximum(a, b) + h * h / (4.0 * k)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) of points (N, 3) to the segment from ``a`` to ``b`` (3,)."""
    ab = b - a
    length2 = float(ab @ ab)
    ap = points - a
    if length2 <= 0.0:
        return np.sqrt(np.einsum("ij,ij->i", ap, ap))
    t = np.clip(ap @ ab / length2, 0.0, 1.0)
    diff = ap - t[:, None] * ab
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _tube_profile(dist: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    """Blurred tube cross-section at distance ``dist`` mm from the axis (values in [0, 1]).

    A box [-radius, radius] convolved with a Gaussian of standard deviation ``sigma`` mm.
    """
    scale = _SQRT2 * sigma
    return 0.5 * (erf((radius - dist) / scale) + erf((radius + dist) / scale))


@dataclasses.dataclass(frozen=True)
class Lung:
    """One lung: a (z-tapered) ellipsoid cut by a diaphragm dome and a mediastinal plane.

    ``side`` is +1 for the right lung (x > 0) and -1 for the left. ``center`` and ``axes`` (mm)
    define the ellipsoid; above its centre the x and y semi-axes shrink linearly to
    ``1 - taper`` times their value at the top. The diaphragm dome is the surface
    ``z = dome_z - dome_height * (u^2 + v^2)`` with ``u, v`` the ellipsoid-normalised x, y;
    the lung lies above it and at ``side * x > medial_x``. Creases between the ellipsoid and
    the dome are rounded over about ``corner`` mm (:func:`_smooth_max`).
    """

    side: int
    center: np.ndarray
    axes: np.ndarray
    taper: float
    dome_z: float
    dome_height: float
    medial_x: float
    corner: float

    def sd(self, p: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) of points (N, 3) to this lung, negative inside."""
        rel = p - self.center
        shrink = 1.0 - self.taper * np.clip(rel[:, 2] / self.axes[2], 0.0, 1.0)
        axes = np.empty_like(rel)
        axes[:, 0] = self.axes[0] * shrink
        axes[:, 1] = self.axes[1] * shrink
        axes[:, 2] = self.axes[2]
        sd = _ellipsoid_sd(rel, axes)
        u = rel[:, 0] / self.axes[0]
        v = rel[:, 1] / self.axes[1]
        dome = self.dome_z - self.dome_height * (u * u + v * v)
        slope = 2.0 * self.dome_height * np.hypot(u / self.axes[0], v / self.axes[1])
        sd = _smooth_max(sd, (dome - p[:, 2]) / np.sqrt(1.0 + slope * slope), self.corner)
        return np.maximum(sd, self.medial_x - self.side * p[:, 0])

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi) in mm of the lung."""
        return self.center - self.axes, self.center + self.axes


@dataclasses.dataclass(frozen=True)
class VesselTree:
    """Vessel segments of both lungs; M segments, each a straight tube of constant radius.

    ``start``, ``end``: (M, 3) RAS mm; ``radius``: (M,) mm; ``generation``: (M,) int, 0 for
    the hilar root of a lung, 1 for lobar branches, ...; ``parent``: (M,) int, index of the
    parent segment (-1 for roots). A child starts at the end of its parent, so the ends of
    segments that have children are the branch points.
    """

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    generation: np.ndarray
    parent: np.ndarray

    @classmethod
    def empty(cls) -> "VesselTree":
        """A tree without segments."""
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, dtype=int),
                   np.zeros(0, dtype=int))

    def has_children(self) -> np.ndarray:
        """(M,) bool: whether segment m has at least one child (its end is a branch point)."""
        counts = np.bincount(self.parent[self.parent >= 0], minlength=len(self.parent))
        return counts > 0


@dataclasses.dataclass(frozen=True)
class LungAnatomy:
    """Analytic inhale anatomy in RAS mm; evaluate it with :meth:`evaluate`.

    Draw one with :meth:`random`. All lengths and positions are in mm, HU values are the
    module constants. Body: elliptic cylinder of semi-axes ``body_axes`` (x, y, z) with ends
    rounded by ``body_round``, fat layer ``fat_mm`` under the skin. Spine: elliptic cylinder at
    ``spine_center`` (x, y) with semi-axes ``spine_axes``. Ribs: ``rib_count`` elliptic hoops
    of tube radius ``rib_radius`` on the ellipse ``rib_path_axes``, ``rib_step`` apart from
    ``rib_top`` down, dropping by ``rib_drop`` from back to front, open at the front for
    ``|x| < sternal_gap``. Lungs (:class:`Lung`) stay inside the elliptic cylinder
    ``cage_axes`` and ``organ_margin`` away from the heart (ellipsoid ``heart_center``,
    ``heart_axes``) and the spine. Airways: tubes from ``airway_start`` to ``airway_end``
    (K, 3) of ``airway_radius`` (K,). ``tree``: the vessels. Texture: plane waves with wave
    vectors ``texture_k`` (W, 3) rad/mm, phases ``texture_phase`` (W,), amplitude
    ``texture_amp`` HU each; the parenchyma gets ``-GRAVITY_HU * (y - lung_center_y) /
    lung_half_y`` HU more towards the back.
    """

    body_axes: np.ndarray
    body_round: float
    fat_mm: float
    spine_center: np.ndarray
    spine_axes: np.ndarray
    rib_path_axes: np.ndarray
    rib_top: float
    rib_step: float
    rib_count: int
    rib_drop: float
    rib_radius: float
    sternal_gap: float
    cage_axes: np.ndarray
    heart_center: np.ndarray
    heart_axes: np.ndarray
    organ_margin: float
    lungs: Tuple[Lung, ...]
    airway_start: np.ndarray
    airway_end: np.ndarray
    airway_radius: np.ndarray
    tree: VesselTree
    texture_k: np.ndarray
    texture_phase: np.ndarray
    texture_amp: float
    lung_center_y: float
    lung_half_y: float

    @classmethod
    def random(cls, rng: np.random.Generator, fov_mm: Sequence[float], generations: int = 7,
               fat_mm: float = 6.0) -> "LungAnatomy":
        """Draw an anatomy for a nominal field of view ``fov_mm`` (3,) mm centred on the origin.

        Varies with ``rng``: body and lung sizes (about +-6 %, independently per lung), lung
        positions, dome heights, heart size, the vessel trees and the parenchyma texture.
        Each lung gets two vessel trees (an arterial one entering at the hilum and a venous
        one entering lower and more anteriorly, next to the heart). ``generations`` is the
        number of vessel generations below the hilar root (lobar branches are generation 1).
        ``fat_mm`` is the subcutaneous fat thickness at the reference field of view (0: none).
        """
        s = np.asarray(fov_mm, dtype=np.float64) / REFERENCE_FOV_MM
        sm = float(np.prod(s)) ** (1.0 / 3.0)

        def jit(rel: float = 0.06) -> float:
            return float(1.0 + rng.uniform(-rel, rel))

        body_axes = np.array([110.0 * jit(0.04), 82.0 * jit(0.04), 115.0]) * s
        spine_center = np.array([0.0, -body_axes[1] + 38.0 * s[1]])
        spine_axes = np.array([16.0 * s[0], 14.0 * s[1]])
        cage_axes = body_axes[:2] - np.array([15.0 * s[0], 14.0 * s[1]])
        lungs = []
        for side, cx, ax, dome in ((1, 52.0, 40.0, -45.0), (-1, -50.0, 37.0, -52.0)):
            size = jit()
            center = np.array([cx * jit(0.04), -5.0 + rng.uniform(-3.0, 3.0), -5.0]) * s
            axes = np.array([ax * size, 62.0 * size, 100.0 * jit(0.04)]) * s
            lungs.append(Lung(
                side=side, center=center, axes=axes, taper=float(rng.uniform(0.2, 0.35)),
                dome_z=float((dome + rng.uniform(-6.0, 6.0)) * s[2]),
                dome_height=float(rng.uniform(22.0, 32.0) * s[2]),
                medial_x=float(rng.uniform(15.0, 19.0) * s[0]), corner=10.0 * sm,
            ))
        heart_center = np.array([-12.0, 22.0, -35.0]) * s
        heart_axes = np.array([46.0, 40.0, 45.0]) * jit() * s
        carina = np.array([0.0, 5.0 * s[1], 30.0 * s[2]])
        hila = [np.array([lung.side * (lung.medial_x - 2.0 * s[0]), lung.center[1] + 5.0 * s[1],
                          10.0 * s[2]]) for lung in lungs]
        airway_start = np.array([[0.0, 10.0 * s[1], body_axes[2] + 10.0 * s[2]], carina, carina])
        airway_end = np.array([carina, hila[0], hila[1]])
        airway_radius = np.array([8.0, 5.5, 5.0]) * sm
        n_waves = 32
        direction = rng.normal(size=(n_waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(12.0, 40.0, size=n_waves) * sm
        apex = max(float(lung.center[2] + lung.axes[2]) for lung in lungs)
        anatomy = cls(
            body_axes=body_axes, body_round=25.0 * sm, fat_mm=float(fat_mm) * sm,
            spine_center=spine_center, spine_axes=spine_axes,
            rib_path_axes=body_axes[:2] - np.array([9.0 * s[0], 9.0 * s[1]]),
            rib_top=apex - 12.0 * s[2], rib_step=24.0 * s[2], rib_count=9,
            rib_drop=25.0 * s[2], rib_radius=4.0 * sm, sternal_gap=22.0 * s[0],
            cage_axes=cage_axes, heart_center=heart_center, heart_axes=heart_axes,
            organ_margin=4.0 * sm, lungs=tuple(lungs), airway_start=airway_start,
            airway_end=airway_end, airway_radius=airway_radius,
            tree=VesselTree.empty(),
            texture_k=direction * (2.0 * np.pi / wavelength)[:, None],
            texture_phase=rng.uniform(0.0, 2.0 * np.pi, size=n_waves),
            texture_amp=TEXTURE_STD_HU / np.sqrt(n_waves / 2.0),
            lung_center_y=float(np.mean([lung.center[1] for lung in lungs])),
            lung_half_y=float(np.mean([lung.axes[1] for lung in lungs])),
        )
        roots = [(lung, hilum, 6.5 * sm) for lung, hilum in zip(lungs, hila)]
        roots += [(lung, np.array([lung.side * (lung.medial_x - 2.0 * s[0]),
                                   lung.center[1] + 18.0 * s[1], -15.0 * s[2]]), 6.0 * sm)
                  for lung in lungs]
        tree = _grow_vessel_tree(anatomy, rng, roots, generations)
        return dataclasses.replace(anatomy, tree=tree)

    @property
    def lung_apex_z(self) -> float:
        """Highest z (mm) of the lungs' ellipsoids."""
        return max(float(lung.center[2] + lung.axes[2]) for lung in self.lungs)

    @property
    def dome_z(self) -> float:
        """Mean z (mm) of the tops of the two diaphragm domes."""
        return float(np.mean([lung.dome_z for lung in self.lungs]))

    def body_sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the body: an elliptic cylinder with rounded ends."""
        bx, by, bz = self.body_axes
        radial = _ellipse_sd(p[:, 0], p[:, 1], bx, by) + self.body_round
        axial = np.abs(p[:, 2]) - bz + self.body_round
        outside = np.hypot(np.maximum(radial, 0.0), np.maximum(axial, 0.0))
        return outside + np.minimum(np.maximum(radial, axial), 0.0) - self.body_round

    def spine_sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the vertebral column (an elliptic cylinder along z)."""
        return _ellipse_sd(p[:, 0] - self.spine_center[0], p[:, 1] - self.spine_center[1],
                           *self.spine_axes)

    def bone_sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to bone: spine and ribs, kept inside the body."""
        rx, ry = self.rib_path_axes
        radial = _ellipse_sd(p[:, 0], p[:, 1], rx, ry)
        shift = p[:, 2] + self.rib_drop * 0.5 * (p[:, 1] / ry + 1.0)
        level = np.clip(np.rint((self.rib_top - shift) / self.rib_step), 0, self.rib_count - 1)
        dz = shift - (self.rib_top - level * self.rib_step)
        ribs = np.hypot(radial, dz) - self.rib_radius
        gap = np.where(p[:, 1] > 0.0, self.sternal_gap - np.abs(p[:, 0]), -np.inf)
        ribs = np.maximum(ribs, gap)
        return np.maximum(np.minimum(ribs, self.spine_sd(p)), self.body_sd(p) + 3.0)

    def lung_sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the union of the lungs, negative inside.

        The lungs are kept inside the rib cage and ``organ_margin`` away from heart and spine;
        the crease where the heart meets the lung base is rounded over ``4 * organ_margin``.
        """
        sd = np.minimum.reduce([lung.sd(p) for lung in self.lungs])
        sd = np.maximum(sd, _ellipse_sd(p[:, 0], p[:, 1], *self.cage_axes))
        heart = _ellipsoid_sd(p - self.heart_center, self.heart_axes)
        sd = _smooth_max(sd, self.organ_margin - heart, 4.0 * self.organ_margin)
        return np.maximum(sd, self.organ_margin - self.spine_sd(p))

    def airway_sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the air-filled trachea and main bronchi."""
        dists = [_segment_distance(p, a, b) - r
                 for a, b, r in zip(self.airway_start, self.airway_end, self.airway_radius)]
        return np.minimum.reduce(dists)

    def texture(self, p: np.ndarray) -> np.ndarray:
        """Smooth parenchyma texture (HU, zero mean): a sum of random plane waves."""
        phase = p @ self.texture_k.T + self.texture_phase
        return self.texture_amp * np.cos(phase).sum(axis=1)

    def vessel_fraction(self, p: np.ndarray, sigma: float) -> np.ndarray:
        """Blurred vessel occupancy in [0, 1] at points (N, 3): max over segment tubes."""
        out = np.zeros(len(p))
        tree = self.tree
        if len(p) == 0 or len(tree.radius) == 0:
            return out
        kd = cKDTree(p)
        centres = 0.5 * (tree.start + tree.end)
        reach = (0.5 * np.linalg.norm(tree.end - tree.start, axis=1) + tree.radius
                 + 4.0 * sigma)
        hits = kd.query_ball_point(centres, reach)
        for m, idx in enumerate(hits):
            if not idx:
                continue
            idx = np.asarray(idx)
            dist = _segment_distance(p[idx], tree.start[m], tree.end[m])
            out[idx] = np.maximum(out[idx], _tube_profile(dist, tree.radius[m], sigma))
        return out

    def evaluate(self, p: np.ndarray, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
        """Render the anatomy at inhale-space points (N, 3) RAS mm.

        ``sigma`` is the blur (mm). Returns HU (N,) float64 without noise and the lung mask
        (N,) bool (un-blurred lung region, vessels inside the lung included).
        """
        body_sd = self.body_sd(p)
        body = _soft_inside(body_sd, sigma)
        tissue = np.full(len(p), TISSUE_HU)
        if self.fat_mm > 0.0:
            tissue += (FAT_HU - TISSUE_HU) * _soft_inside(-self.fat_mm - body_sd, sigma)
        hu = AIR_HU + body * (tissue - AIR_HU)
        bone = _soft_inside(self.bone_sd(p), sigma)
        hu += bone * (BONE_HU - hu)
        airway = _soft_inside(self.airway_sd(p), sigma) * body
        hu += airway * (AIR_HU - hu)
        lung_sd = self.lung_sd(p)
        near = np.flatnonzero(lung_sd < 5.0 * sigma)
        q = p[near]
        lung = _soft_inside(lung_sd[near], sigma)
        gravity = -GRAVITY_HU * (q[:, 1] - self.lung_center_y) / self.lung_half_y
        parenchyma = PARENCHYMA_HU + gravity + self.texture(q)
        hu[near] += lung * (parenchyma - hu[near])
        reach = float(np.max(self.tree.radius, initial=0.0)) + 4.0 * sigma
        near_v = np.flatnonzero(lung_sd < reach)
        vessel = self.vessel_fraction(p[near_v], sigma)
        hu[near_v] += vessel * (VESSEL_HU - hu[near_v])
        return hu, lung_sd < 0.0


def _sample_inside(rng: np.random.Generator, sd_fn: Callable[[np.ndarray], np.ndarray],
                   lo: np.ndarray, hi: np.ndarray, n: int, margin: float) -> np.ndarray:
    """``n`` uniform random points (n, 3) in the box [lo, hi] with ``sd_fn < -margin``."""
    found: List[np.ndarray] = []
    total = 0
    for _ in range(200):
        cand = rng.uniform(lo, hi, size=(4 * n, 3))
        keep = cand[sd_fn(cand) < -margin]
        found.append(keep)
        total += len(keep)
        if total >= n:
            break
    pts = np.concatenate(found)
    if len(pts) < n:
        raise RuntimeError("lung region too small to sample vessel territories")
    return pts[:n]


def _split_normal(terr: np.ndarray, direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit normal (3,) of the plane splitting territory ``terr`` (K, 3) of a branch.

    The plane contains the branch ``direction`` (unit, (3,)); its normal is the territory's
    direction of largest spread perpendicular to the branch, turned about the branch by a
    random angle of up to 0.4 rad.
    """
    _, vecs = np.linalg.eigh(np.cov(terr.T))
    normal = vecs[:, 2]
    for col in (2, 1, 0):
        normal = vecs[:, col] - (vecs[:, col] @ direction) * direction
        if np.linalg.norm(normal) > 0.3:
            break
    normal /= np.linalg.norm(normal)
    angle = rng.uniform(-0.4, 0.4)
    return np.cos(angle) * normal + np.sin(angle) * np.cross(direction, normal)


def _grow_vessel_tree(anatomy: LungAnatomy, rng: np.random.Generator,
                      roots: Sequence[Tuple[Lung, np.ndarray, float]],
                      generations: int) -> VesselTree:
    """Grow vessel trees by territory splitting; ``roots``: (lung, hilum (3,) mm, radius mm).

    For each root, its lung is filled with random territory points. The root runs from the
    hilum towards the lung's centroid and splits into lobar branches (3 right, 2 left: slabs
    along an oblique axis). Every branch heads for the centroid of its territory (or the
    territory point nearest to it when the centroid is not well inside the lung), stops 40-60 %
    of the way there and splits the territory in two by a plane containing its direction
    (:func:`_split_normal`); branches of the last generation, or with tiny territories, reach
    their target. Radii follow Murray's law, ``r_child = r_parent * (territory fraction) **
    (1/3)``. Grown one generation at a time.
    """
    starts: List[np.ndarray] = []
    ends: List[np.ndarray] = []
    radii: List[float] = []
    gens: List[int] = []
    parents: List[int] = []
    min_points = 4
    margin = 2.0

    def add(a: np.ndarray, b: np.ndarray, r: float, g: int, parent: int) -> int:
        starts.append(a)
        ends.append(b)
        radii.append(r)
        gens.append(g)
        parents.append(parent)
        return len(radii) - 1

    pending: List[Tuple[np.ndarray, np.ndarray, float, int]] = []
    for lung, hilum, root_radius in roots:
        lo, hi = lung.bounds()
        terr = _sample_inside(rng, anatomy.lung_sd, lo, hi, 6000, margin)
        root_end = hilum + rng.uniform(0.3, 0.4) * (terr.mean(axis=0) - hilum)
        root = add(hilum, root_end, root_radius, 0, -1)
        lobe_axis = np.array([0.0, -0.5, 1.0]) / np.sqrt(1.25)
        fractions = [0.45, 0.2, 0.35] if lung.side > 0 else [0.5, 0.5]
        order = np.argsort(terr @ lobe_axis)
        bounds = np.rint(np.cumsum([0.0] + fractions) * len(terr)).astype(int)
        for lo_i, hi_i in zip(bounds[:-1], bounds[1:]):
            lobe = terr[order[lo_i:hi_i]]
            pending.append((root_end, lobe, root_radius * (len(lobe) / len(terr)) ** (1 / 3), root))

    for gen in range(1, generations + 1):
        if not pending:
            break
        targets = np.array([terr.mean(axis=0) for _, terr, _, _ in pending])
        outside = anatomy.lung_sd(targets) > -margin
        children: List[Tuple[np.ndarray, np.ndarray, float, int]] = []
        for (start, terr, radius, parent), target, out in zip(pending, targets, outside):
            if out:
                target = terr[np.argmin(np.linalg.norm(terr - target, axis=1))]
            vec = target - start
            dist = float(np.linalg.norm(vec))
            if dist < 1e-6:
                continue
            terminal = gen == generations or len(terr) < 2 * min_points
            end = start + (1.0 if terminal else rng.uniform(0.4, 0.6)) * vec
            idx = add(start, end, radius, gen, parent)
            if terminal:
                continue
            proj = terr @ _split_normal(terr, vec / dist, rng)
            cut = np.quantile(proj, rng.uniform(0.4, 0.6))
            for part in (terr[proj <= cut], terr[proj > cut]):
                if len(part) >= min_points:
                    children.append((end, part, radius * (len(part) / len(terr)) ** (1 / 3), idx))
        pending = children
    return VesselTree(start=np.array(starts), end=np.array(ends), radius=np.array(radii),
                      generation=np.array(gens, dtype=int), parent=np.array(parents, dtype=int))


@dataclasses.dataclass(frozen=True)
class BreathingMotion:
    """Smooth invertible breathing motion ``F(x) = x + d(x)`` from inhale to exhale space.

    All lengths in mm, points are RAS mm arrays of shape (N, 3). With
    ``t = (z_apex - z) / (z_apex - z_dome)`` (0 at the lung apex, 1 at the diaphragm dome) and
    ``g(t)`` a logistic step from 0 (t = 0) to 1 (t = 1):

    * ``d_z = si_mm * (apex_fraction + (1 - apex_fraction) g) * abdomen(z)
      * (1 - posterior_gain * yr) * (1 + lr_asymmetry * xr)`` (superior, exhale moves up);
    * ``d_y = -ap_mm * (1 + yr) / 2 * (0.6 + 0.4 g) * abdomen(z)`` (anterior wall moves back);
    * ``d_x = -lr_mm * xr * (0.5 + 0.5 g)`` (lateral contraction);

    with ``yr = 2 tanh((y - y_center) / (2 y_half))`` (about -0.9 at the posterior lung edge,
    +0.9 anteriorly, bounded by 2 far away), ``xr = 2 tanh(x / (2 x_half))`` and ``abdomen(z)``
    decaying smoothly from 1 to 0.5 at about ``abdomen_mm`` below the dome. Every factor is
    bounded with bounded derivatives, so the displacement gradient is small everywhere in
    space, not only inside the body.
    """

    si_mm: float
    ap_mm: float
    lr_mm: float
    apex_fraction: float
    posterior_gain: float
    lr_asymmetry: float
    z_apex: float
    z_dome: float
    y_center: float
    y_half: float
    x_half: float
    abdomen_mm: float

    @classmethod
    def random(cls, rng: np.random.Generator, anatomy: LungAnatomy,
               motion_mm: float) -> "BreathingMotion":
        """Draw a motion for ``anatomy``: SI amplitude ``motion_mm`` times U(0.8, 1.2)."""
        si = float(motion_mm * rng.uniform(0.8, 1.2))
        return cls(
            si_mm=si,
            ap_mm=si * float(rng.uniform(0.3, 0.5)),
            lr_mm=si * float(rng.uniform(0.08, 0.15)),
            apex_fraction=float(rng.uniform(0.35, 0.45)),
            posterior_gain=float(rng.uniform(0.15, 0.3)),
            lr_asymmetry=float(rng.uniform(-0.1, 0.1)),
            z_apex=anatomy.lung_apex_z,
            z_dome=anatomy.dome_z,
            y_center=anatomy.lung_center_y,
            y_half=anatomy.lung_half_y,
            x_half=float(anatomy.body_axes[0]),
            abdomen_mm=float(0.5 * anatomy.body_axes[2]),
        )

    def _step(self, z: np.ndarray) -> np.ndarray:
        """Logistic step g(z): 0 at the lung apex, 1 at the dome; C-infinity, in [-0.15, 1.06]."""
        t = (self.z_apex - z) / (self.z_apex - self.z_dome)
        centre, width = 0.4, 0.2
        lo, hi = expit(-centre / width), expit((1.0 - centre) / width)
        return (expit((t - centre) / width) - lo) / (hi - lo)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """d(x) (N, 3) mm at inhale-space points (N, 3): exhale position minus inhale position."""
        p = np.asarray(points, dtype=np.float64)
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        g = self._step(z)
        below = (self.z_dome - z - self.abdomen_mm) / (0.4 * self.abdomen_mm)
        abdomen = 1.0 - 0.5 * expit(below)
        yr = 2.0 * np.tanh(0.5 * (y - self.y_center) / self.y_half)
        xr = 2.0 * np.tanh(0.5 * x / self.x_half)
        out = np.empty_like(p)
        out[:, 2] = (self.si_mm * (self.apex_fraction + (1.0 - self.apex_fraction) * g) * abdomen
                     * (1.0 - self.posterior_gain * yr) * (1.0 + self.lr_asymmetry * xr))
        out[:, 1] = -self.ap_mm * 0.5 * (1.0 + yr) * (0.6 + 0.4 * g) * abdomen
        out[:, 0] = -self.lr_mm * xr * (0.5 + 0.5 * g)
        return out

    def forward(self, points: np.ndarray) -> np.ndarray:
        """F(x) (N, 3): exhale-space RAS mm of inhale-space points (N, 3)."""
        p = np.asarray(points, dtype=np.float64)
        return p + self.displacement(p)

    def inverse(self, points: np.ndarray, tol: float = 1e-6, max_iter: int = 100) -> np.ndarray:
        """F^-1(y) (N, 3): inhale-space RAS mm of exhale-space points (N, 3).

        Fixed-point iteration ``x <- y - d(x)`` (a contraction: |grad d| < 1) until the largest
        update is below ``tol`` mm.
        """
        y = np.asarray(points, dtype=np.float64)
        x = y - self.displacement(y)
        for _ in range(max_iter):
            new = y - self.displacement(x)
            step = float(np.max(np.abs(new - x), initial=0.0))
            x = new
            if step < tol:
                return x
        raise RuntimeError("inverse breathing motion did not converge")

    def jacobian(self, points: np.ndarray, h: float = 0.05) -> np.ndarray:
        """dF/dx (N, 3, 3) at inhale-space points (N, 3), central differences of step ``h`` mm.

        ``J[n, a, b] = dF_a / dx_b``.
        """
        p = np.asarray(points, dtype=np.float64)
        jac = np.empty((len(p), 3, 3))
        for b in range(3):
            e = np.zeros(3)
            e[b] = h
            jac[:, :, b] = (self.forward(p + e) - self.forward(p - e)) / (2.0 * h)
        return jac

    def jacobian_det(self, points: np.ndarray) -> np.ndarray:
        """det(dF/dx) (N,) at inhale-space points (N, 3); > 0 means locally invertible."""
        return np.linalg.det(self.jacobian(points))


def _to_nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image of ``data`` with ``affine`` as sform and qform (code 1), units mm."""
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def _render(anatomy: LungAnatomy, shape: Sequence[int], affine: np.ndarray,
            motion: Optional[BreathingMotion], noise_hu: float,
            rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Render on a grid: (HU float32, lung mask uint8), both of shape ``shape``.

    Without ``motion`` the inhale anatomy is sampled at the voxel centres; with it, at
    ``motion.inverse`` of the voxel centres (the exhale image).
    """
    points = voxel_centres(shape, affine)
    sigma = psf_sigma(affine)
    hu = np.empty(len(points))
    mask = np.empty(len(points), dtype=bool)
    for lo in range(0, len(points), _CHUNK):
        chunk = points[lo:lo + _CHUNK]
        if motion is not None:
            chunk = motion.inverse(chunk)
        hu[lo:lo + _CHUNK], mask[lo:lo + _CHUNK] = anatomy.evaluate(chunk, sigma)
    if noise_hu > 0.0:
        hu += rng.normal(0.0, noise_hu, size=hu.shape)
    shape = tuple(int(v) for v in shape)
    return hu.reshape(shape).astype(np.float32), mask.reshape(shape).astype(np.uint8)


def _farthest_point_order(points: np.ndarray, k: int, rng: np.random.Generator,
                          chosen: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of ``k`` of ``points`` (N, 3) picked by greedy farthest-point sampling.

    Each pick is the point farthest from all earlier picks and from ``chosen`` (M, 3); the first
    pick is random when ``chosen`` is empty.
    """
    if chosen is not None and len(chosen):
        dist = cKDTree(chosen).query(points)[0]
    else:
        dist = np.full(len(points), np.inf)
        dist[rng.integers(len(points))] = np.finfo(float).max
    picks = np.empty(k, dtype=int)
    for n in range(k):
        picks[n] = int(np.argmax(dist))
        dist = np.minimum(dist, np.linalg.norm(points - points[picks[n]], axis=1))
    return picks


def _select_landmarks(anatomy: LungAnatomy, n: int, margin: float,
                      rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` inhale landmarks (n, 3) mm at least ``margin`` mm inside the lungs.

    Vessel branch points first, spread out by farthest-point sampling; if there are too few,
    the rest are centreline points (at 1/2, 1/4, 3/4, 1/8, ... of the segments), again spread
    out. Returns the points and an (n,) bool array marking branch points.
    """
    tree = anatomy.tree
    branch = tree.end[tree.has_children()]
    branch = branch[anatomy.lung_sd(branch) < -margin]
    if len(branch) >= n:
        return branch[_farthest_point_order(branch, n, rng)], np.ones(n, dtype=bool)
    need = n - len(branch)
    candidates = np.zeros((0, 3))
    for level in range(1, 8):
        fractions = (np.arange(2 ** (level - 1)) * 2 + 1) / 2.0 ** level
        cand = np.concatenate([tree.start + f * (tree.end - tree.start) for f in fractions])
        candidates = np.concatenate([candidates, cand[anatomy.lung_sd(cand) < -margin]])
        if len(candidates) >= need:
            break
    if len(candidates) < need:
        raise RuntimeError(f"could only place {len(branch) + len(candidates)} of {n} landmarks")
    fill = candidates[_farthest_point_order(candidates, need, rng, chosen=branch)]
    is_branch = np.concatenate([np.ones(len(branch), bool), np.zeros(need, bool)])
    return np.concatenate([branch, fill]), is_branch


@dataclasses.dataclass
class LungPair:
    """A rendered inhale / exhale pair with its ground truth.

    ``inhale``, ``exhale``: NIfTI images, float32 HU. ``inhale_mask``, ``exhale_mask``: uint8
    lung masks on the same grids. ``inhale_points``, ``exhale_points``: (N, 3) float64 RAS mm,
    row n of one is the same anatomical point as row n of the other (``exhale_points =
    motion.forward(inhale_points)``). ``landmark_is_branch``: (N,) bool, True for vessel branch
    points, False for centreline points. ``motion``: the true map inhale -> exhale;
    ``anatomy``: the analytic inhale anatomy. Moving = exhale, fixed = inhale.
    """

    inhale: nib.Nifti1Image
    exhale: nib.Nifti1Image
    inhale_mask: nib.Nifti1Image
    exhale_mask: nib.Nifti1Image
    inhale_points: np.ndarray
    exhale_points: np.ndarray
    landmark_is_branch: np.ndarray
    motion: BreathingMotion
    anatomy: LungAnatomy

    def displacement_fn(self, points: np.ndarray) -> np.ndarray:
        """True displacement (N, 3) mm at inhale (fixed) RAS mm points (N, 3): F(x) - x."""
        return self.motion.displacement(points)

    def displacement_field(self) -> np.ndarray:
        """True displacement on the inhale grid, float32 (X, Y, Z, 3) RAS mm: F(x) - x."""
        shape = self.inhale.shape
        field = self.motion.displacement(voxel_centres(shape, self.inhale.affine))
        return field.reshape(*shape, 3).astype(np.float32)

    def landmark_displacements(self) -> np.ndarray:
        """Length (N,) in mm of each landmark's motion, ``|exhale_point - inhale_point|``."""
        return np.linalg.norm(self.exhale_points - self.inhale_points, axis=1)

    def save(self, out_dir: Union[str, os.PathLike]) -> Dict[str, str]:
        """Write the four images and two landmark CSVs into ``out_dir``; return name -> path."""
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths: Dict[str, str] = {}
        for name in ("inhale", "exhale", "inhale_mask", "exhale_mask"):
            paths[name] = os.path.join(out_dir, f"{name}.nii.gz")
            nib.save(getattr(self, name), paths[name])
        for name in ("inhale_points", "exhale_points"):
            paths[name] = os.path.join(out_dir, f"{name}.csv")
            np.savetxt(paths[name], getattr(self, name), fmt="%.4f", delimiter=",",
                       header="x,y,z", comments="")
        return paths


def make_lung_pair(shape: Sequence[int] = (64, 64, 64),
                   spacing: Sequence[float] = (4.0, 4.0, 4.0),
                   motion_mm: float = 12.0,
                   n_landmarks: int = 300,
                   seed: int = 0,
                   affine: Optional[np.ndarray] = None,
                   exhale_shape: Optional[Sequence[int]] = None,
                   exhale_affine: Optional[np.ndarray] = None,
                   noise_hu: float = 20.0,
                   fov_mm: Optional[Sequence[float]] = None,
                   generations: int = 7,
                   fat_mm: float = 6.0) -> LungPair:
    """Draw and render a synthetic inhale / exhale lung CT pair.

    ``shape`` (3,) voxels and ``spacing`` (3,) mm define the inhale grid (default affine:
    :func:`default_affine`, centred on the origin, axes L->R, P->A, I->S) unless ``affine``
    (4, 4) voxel -> RAS mm is given. The exhale grid is the inhale grid unless
    ``exhale_shape`` and/or ``exhale_affine`` are given (a missing ``exhale_affine`` is then the
    default centred affine of ``exhale_shape`` with ``spacing``). The anatomy and the motion
    depend only on ``seed`` and ``fov_mm`` (default ``shape * spacing``), not on the grids;
    the landmark choice also depends on the largest voxel size (boundary margin). ``motion_mm`` is
    the nominal superior displacement of the diaphragm dome (each seed scales it by
    U(0.8, 1.2)). ``noise_hu`` is the standard deviation of the white noise added to each
    image (independent draws). ``generations``: vessel generations below the hilar root;
    ``fat_mm``: subcutaneous fat thickness at the reference field of view.
    """
    shape = tuple(int(v) for v in shape)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if len(shape) != 3 or spacing_arr.shape != (3,):
        raise ValueError("shape and spacing must have 3 entries")
    affine = default_affine(shape, spacing_arr) if affine is None else np.asarray(affine, float)
    exhale_shape = shape if exhale_shape is None else tuple(int(v) for v in exhale_shape)
    if exhale_affine is None:
        exhale_affine = (affine if exhale_shape == shape
                         else default_affine(exhale_shape, spacing_arr))
    exhale_affine = np.asarray(exhale_affine, dtype=np.float64)
    fov = np.asarray(shape) * spacing_arr if fov_mm is None else np.asarray(fov_mm, float)
    if n_landmarks < 0:
        raise ValueError("n_landmarks must be >= 0")

    anatomy_rng, motion_rng, landmark_rng, inhale_rng, exhale_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    anatomy = LungAnatomy.random(anatomy_rng, fov, generations=generations, fat_mm=fat_mm)
    motion = BreathingMotion.random(motion_rng, anatomy, motion_mm)

    max_voxel = max(np.linalg.norm(affine[:3, :3], axis=0).max(),
                    np.linalg.norm(exhale_affine[:3, :3], axis=0).max())
    margin = 0.55 * np.sqrt(3.0) * max_voxel + 0.5
    inhale_points, is_branch = _select_landmarks(anatomy, n_landmarks, margin, landmark_rng)
    exhale_points = motion.forward(inhale_points)

    inhale, inhale_mask = _render(anatomy, shape, affine, None, noise_hu, inhale_rng)
    exhale, exhale_mask = _render(anatomy, exhale_shape, exhale_affine, motion, noise_hu,
                                  exhale_rng)
    return LungPair(
        inhale=_to_nifti(inhale, affine), exhale=_to_nifti(exhale, exhale_affine),
        inhale_mask=_to_nifti(inhale_mask, affine),
        exhale_mask=_to_nifti(exhale_mask, exhale_affine),
        inhale_points=inhale_points, exhale_points=exhale_points,
        landmark_is_branch=is_branch, motion=motion, anatomy=anatomy,
    )
