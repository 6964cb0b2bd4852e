"""Test and benchmark pairs built from a real scan that a package ships: the MNI152 head.

nilearn ships the ICBM 2009a symmetric MNI152 template (1 mm, 197 x 233 x 189) with grey- and
white-matter probability maps. This module turns it into

* an **MRI**: the T1 template itself, resampled to the spacing asked for;
* a **CT** of the same head: Hounsfield units from the tissue maps (air -1000, scalp +40,
  skull +1000 where the T1 is dark between the brain and the scalp, grey matter +40, white
  matter +28, cerebrospinal fluid +8), mildly blurred; not a scanner's image, but a CT's
  intensity range, contrasts and sharp bone edges;
* **pairs with a known map**: the moving image is the scan deformed by a random smooth map
  ``psi`` (``J(y) = I(psi(y))``, :func:`smooth_displacement`), optionally also moved by a rigid
  motion of its affine. Landmarks are drawn in the brain, at voxels of strong image gradient; a
  moving landmark ``y`` corresponds exactly to the fixed landmark ``psi(y)`` (no inversion
  needed), and to the moved-scan point ``T y`` after a rigid motion ``T``.

Coordinates are RAS millimetres (nibabel), as everywhere in nephi. Moving = A, fixed = B.
nilearn is an optional dependency (extras ``test`` and ``bench``); only its data files are read,
nilearn itself is not imported.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from nephi.data.preprocess import network_grid, resample
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.io.images import save_image
from nephi.io.points import save_points


__all__ = ["Scan", "ScanPair", "mni152", "head_ct", "smooth_displacement", "rigid_motion",
           "brain_landmarks", "make_pair"]

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _template_file(kind: str) -> str:
    """Path of nilearn's shipped MNI152 file ``kind`` (t1, gm, wm), without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise NephiInputError("the MNI152 template comes with nilearn, which is not installed "
                              "(pip install nilearn, or the 'test' extra)")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                        _TEMPLATE.format(kind))
    if not os.path.isfile(path):
        raise NephiInputError(f"{path}: MNI152 file missing from the nilearn installation")
    return path


@dataclass
class Scan:
    """One scan on its grid: ``image`` float32, ``mask`` bool (brain), ``labels`` int16
    (0 background, 1 CSF, 2 grey matter, 3 white matter), ``grid`` its RAS geometry."""

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    grid: Grid
    modality: str


def mni152(spacing: float = 2.5, margin_mm: float = 14.0) -> Scan:
    """The MNI152 T1 head at ``spacing`` mm (isotropic), cropped to the head with ``margin_mm``
    of background on every side (room for the skull of :func:`head_ct`).

    Returns a :class:`Scan` whose image is the T1 in the template's units (0-255)."""
    t1 = nib.load(_template_file("t1"))
    vol = np.asarray(t1.dataobj, dtype=np.float32)
    gm = np.asarray(nib.load(_template_file("gm")).dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(nib.load(_template_file("wm")).dataobj, dtype=np.float32) / 255.0
    head = ndimage.binary_fill_holes(ndimage.binary_closing(vol > 15, iterations=3))
    idx = np.argwhere(head)
    pad = np.ceil(margin_mm / np.linalg.norm(t1.affine[:3, :3], axis=0)).astype(int)
    lo = idx.min(0) - pad
    hi = idx.max(0) + 1 + pad
    source = Grid(t1.shape, t1.affine)
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ lo + t1.affine[:3, 3]
    cropped = Grid(tuple(int(b - a) for a, b in zip(lo, hi)), affine)
    target = network_grid(cropped, spacing=spacing)

    def on_target(arr):
        return resample(arr, source, target)

    image = on_target(vol)
    g, w = on_target(gm), on_target(wm)
    brain = on_target(ndimage.binary_fill_holes(
        ndimage.binary_closing(gm + wm > 0.5, iterations=4)).astype(np.float32)) > 0.5
    labels = np.zeros(target.shape, dtype=np.int16)
    labels[brain] = 1
    labels[brain & (g >= 0.5) & (g >= w)] = 2
    labels[brain & (w > 0.5) & (w > g)] = 3
    return Scan(image=image, mask=brain, labels=labels, grid=target, modality="mri")


def head_ct(mri: Scan) -> Scan:
    """A CT of the head of ``mri`` (a :func:`mni152` scan), in Hounsfield units.

    The template is skull-stripped, so the skull and scalp are drawn as shells around the brain
    by their distance to it: cortical bone (+1000 HU) from 2 to 8 mm, scalp (+40 HU) from 8 to
    12 mm, air (-1000 HU) beyond; inside the brain the tissue values of the module docstring.
    Partial volume from a Gaussian blur of 0.6 voxel. Mask and labels are those of ``mri``."""
    outside_mm = ndimage.distance_transform_edt(~mri.mask, sampling=mri.grid.spacing)
    hu = np.full(mri.image.shape, -1000.0, dtype=np.float32)
    hu[outside_mm <= 12.0] = 40.0
    hu[(outside_mm > 2.0) & (outside_mm <= 8.0)] = 1000.0
    hu[(outside_mm > 0) & (outside_mm <= 2.0)] = 8.0
    hu[mri.labels == 1] = 8.0
    hu[mri.labels == 2] = 40.0
    hu[mri.labels == 3] = 28.0
    hu = ndimage.gaussian_filter(hu, 0.6)
    return Scan(image=hu.astype(np.float32), mask=mri.mask, labels=mri.labels, grid=mri.grid,
                modality="ct")


def smooth_displacement(grid: Grid, max_mm: float, seed: int, scale_mm: float = 40.0,
                        mask: Optional[np.ndarray] = None) -> np.ndarray:
    """A random smooth displacement u on ``grid``, float32 (X, Y, Z, 3) RAS mm.

    Gaussian noise on control points ``scale_mm`` apart, cubic-spline upsampled, scaled so that
    the largest displacement (inside ``mask`` if given) is ``max_mm``; then shrunk if needed so
    that no voxel step changes it by more than 40 % of the step: ``Id + u`` is then invertible
    (det > 0.2 everywhere)."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(grid.shape)
    ctrl = np.maximum(np.ceil(shape * grid.spacing / scale_mm).astype(int) + 1, 3)
    out = np.empty((*grid.shape, 3), dtype=np.float32)
    for c in range(3):
        coarse = rng.standard_normal(tuple(ctrl))
        out[..., c] = ndimage.zoom(coarse, shape / ctrl, order=3, mode="nearest",
                                   grid_mode=True)[tuple(slice(0, s) for s in shape)]
    region = np.ones(grid.shape, bool) if mask is None else mask
    out *= max_mm / np.linalg.norm(out[region], axis=-1).max()
    steepest = max(np.abs(np.diff(out, axis=a)).max() / grid.spacing[a] for a in range(3))
    if steepest > 0.4:
        out *= 0.4 / steepest
    return out


def rigid_motion(grid: Grid, degrees: float, shift_mm: Sequence[float],
                 axis: Sequence[float] = (1.0, 2.0, 0.5)) -> np.ndarray:
    """A 4 x 4 RAS rigid motion: rotation by ``degrees`` about ``axis`` through the centre of
    ``grid``, then a shift of ``shift_mm``."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    a = np.radians(degrees)
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    centre = grid.index_to_ras_points((np.asarray(grid.shape, dtype=np.float64) - 1) / 2)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + np.asarray(shift_mm, dtype=np.float64)
    return out


def brain_landmarks(scan: Scan, n: int, rng: np.random.Generator, min_mm: float) -> np.ndarray:
    """Up to ``n`` voxel centres (RAS mm) in the eroded brain at strong gradients, >= min_mm apart."""
    grad = ndimage.gaussian_gradient_magnitude(scan.image.astype(np.float64), 1.0)
    inside = ndimage.binary_erosion(scan.mask, iterations=2)
    cand = np.argwhere(inside & (grad >= np.percentile(grad[inside], 80)))
    rng.shuffle(cand)
    pts = scan.grid.index_to_ras_points(cand.astype(np.float64))
    kept = []
    for p in pts:
        if all(np.linalg.norm(p - q) >= min_mm for q in kept):
            kept.append(p)
            if len(kept) == n:
                break
    return np.asarray(kept)


def _pull(volume: np.ndarray, grid: Grid, points: np.ndarray, order: int, cval: float) -> np.ndarray:
    """``volume`` sampled at RAS points (..., 3) with spline order ``order``."""
    idx = grid.ras_to_index_points(points.reshape(-1, 3)).T
    out = ndimage.map_coordinates(volume, idx, order=order, mode="constant", cval=cval)
    return out.reshape(points.shape[:-1]).astype(volume.dtype)


@dataclass
class ScanPair:
    """A moving / fixed pair with a known correspondence (see the module docstring).

    Images, masks and labels are on ``fixed_grid`` / ``moving_grid``; ``fixed_points`` (N, 3)
    and ``moving_points`` (N, 3) RAS mm correspond row by row."""

    fixed: np.ndarray
    moving: np.ndarray
    fixed_mask: np.ndarray
    moving_mask: np.ndarray
    fixed_labels: np.ndarray
    moving_labels: np.ndarray
    fixed_grid: Grid
    moving_grid: Grid
    fixed_points: np.ndarray
    moving_points: np.ndarray

    def save(self, out_dir) -> Dict[str, str]:
        """Write images, masks, labels (NIfTI) and points (CSV) into ``out_dir``; name -> path."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {}
        for side in ("fixed", "moving"):
            grid = getattr(self, f"{side}_grid")
            for part, dtype in (("", np.float32), ("_mask", np.uint8), ("_labels", np.int16)):
                name = side + part
                paths[name] = os.path.join(out_dir, f"{name}.nii.gz")
                save_image(paths[name], getattr(self, name), grid, dtype=dtype)
            paths[f"{side}_points"] = os.path.join(out_dir, f"{side}_points.csv")
            save_points(paths[f"{side}_points"], getattr(self, f"{side}_points"))
        return paths


def make_pair(scan: Scan, max_mm: float = 8.0, seed: int = 0, degrees: float = 0.0,
              shift_mm: Sequence[float] = (0.0, 0.0, 0.0), n_landmarks: int = 200,
              scale_mm: float = 40.0) -> ScanPair:
    """Fixed = ``scan``; moving = ``scan`` deformed by a random smooth map of largest
    displacement ``max_mm`` (seeded), its affine then moved by a rigid motion of ``degrees``
    about an oblique axis and ``shift_mm``. Background outside the scan: its minimum."""
    rng = np.random.default_rng(seed)
    grid = scan.grid
    u = smooth_displacement(grid, max_mm, seed, scale_mm, mask=scan.mask)
    psi = grid.index_to_ras_points(np.indices(grid.shape).reshape(3, -1).T.astype(np.float64))
    psi = psi.reshape(*grid.shape, 3) + u
    background = float(scan.image.min())
    moving = _pull(scan.image, grid, psi, 3, background)
    moving_mask = _pull(scan.mask.astype(np.float32), grid, psi, 1, 0.0) > 0.5
    moving_labels = _pull(scan.labels, grid, psi, 0, 0)
    y = brain_landmarks(Scan(moving, moving_mask, moving_labels, grid, scan.modality), n_landmarks,
                   rng, min_mm=2.0 * float(grid.spacing.max()))
    u_at_y = np.stack([_pull(u[..., c], grid, y, 1, 0.0) for c in range(3)], axis=-1)
    motion = rigid_motion(grid, degrees, shift_mm)
    moving_grid = Grid(grid.shape, motion @ grid.affine)
    return ScanPair(fixed=scan.image, moving=moving, fixed_mask=scan.mask,
                    moving_mask=moving_mask, fixed_labels=scan.labels,
                    moving_labels=moving_labels, fixed_grid=grid, moving_grid=moving_grid,
                    fixed_points=y + u_at_y,
                    moving_points=y @ motion[:3, :3].T + motion[:3, 3])
