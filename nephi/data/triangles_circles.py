"""Synthetic 2-D "Triangles and Circles" (T&C) registration dataset.

This is a re-implementation of the toy dataset used in the ICON / GradICON
papers and in NePhi (section 5.1).  Every image holds a single shape, either a
circle or a triangle, with intensity 1 on a background of intensity 0.  The two
images of a pair are independent random draws of the *same* shape class (both
circles or both triangles), so a registration method has to move, rescale and
deform one shape onto the other.

Two modes exist:

``solid``
    The whole shape is bright.
``hollow``
    Only a band of thickness ``t`` just inside the shape boundary is bright;
    the interior is dark.  ``t`` is 15-25 % of the shape's equivalent radius
    ``sqrt(area / pi)`` (at least 1.5 pixels).

Conventions
-----------
* Arrays are indexed ``[i, j]``; geometric points are written ``(i, j)`` in
  pixel units, pixel ``[i, j]`` having its centre at ``(i, j)``.  The spacing is
  1 mm, so pixel units are millimetres.
* Images are ``float32`` of shape ``(S, S)`` with values in ``[0, 1]``.  Edges
  are anti-aliased with a linear ramp of width ``edge_width`` (1 pixel) across
  the exact signed distance ``d`` to the bright region:
  ``I = clip(0.5 - d / edge_width, 0, 1)``.  This approximates the fraction of
  each pixel covered by the region, so ``I.sum()`` is close to the region area.
* Label maps are ``uint8`` of shape ``(S, S)``: 0 background, 1 bright region,
  i.e. ``label == (d < 0) == (I > 0.5)``.  In hollow mode the label is the
  bright band only, *not* the dark hole it encloses, so that the Dice score of
  warped label maps measures the alignment of the visible structure.
* Circles have radius 10-35 % of ``S``.  Triangles have circumradius 20-45 % of
  ``S``, every interior angle at least 25 degrees and inradius at least 6 % of
  ``S``.  All shapes lie inside the image with a margin of
  ``max(2, 0.03 S)`` pixels, and their centre (circle centre, triangle
  centroid) is uniform in the central window ``[0.35, 0.65] * (S - 1)`` along
  each axis (as in the original dataset, whose centres span 30 % of the field
  of view), so that moving and fixed shapes usually overlap.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Union

import numpy as np


MODES = ("solid", "hollow")


SHAPES = ("circle", "triangle")


CIRCLE_RADIUS_RANGE = (0.10, 0.35)


TRIANGLE_CIRCUMRADIUS_RANGE = (0.20, 0.45)


TRIANGLE_MIN_ANGLE_DEG = 25.0


TRIANGLE_MIN_INRADIUS = 0.06


CENTER_WINDOW = (0.35, 0.65)


HOLLOW_THICKNESS_RANGE = (0.15, 0.25)


HOLLOW_MIN_THICKNESS = 1.5


MIN_SIZE = 16


RngLike = Union[None, int, np.random.Generator]


def _margin(size: int) -> float:
    """Distance in pixels kept free between any shape and the image border."""
    return max(2.0, 0.03 * size)


def _check_args(size: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")


def _center_bounds(size: int, low_extent: np.ndarray, high_extent: np.ndarray) -> tuple:
    """Bounds ``(lo, hi)``, each (2,), for a shape centre ``c`` such that the
    centre lies in the central window and ``c - low_extent`` / ``c +
    high_extent`` stay inside the image margin (all in pixels)."""
    m = _margin(size)
    window = np.asarray(CENTER_WINDOW) * (size - 1)
    lo = np.maximum(m + low_extent, window[0])
    hi = np.minimum(size - 1 - m - high_extent, window[1])
    return lo, hi


def _grid(size: int) -> tuple:
    """Pixel-centre coordinates ``(ii, jj)``, each of shape ``(S, S)``."""
    coords = np.arange(size, dtype=np.float64)
    return np.meshgrid(coords, coords, indexing="ij")


def _sample_circle(size: int, rng: np.random.Generator) -> Dict[str, Any]:
    """Draw a circle fully inside the image.

    Returns a dict with ``center`` (2,) in pixels ``(i, j)``, ``radius`` in
    pixels and ``area`` in pixels^2.
    """
    radius = rng.uniform(*CIRCLE_RADIUS_RANGE) * size
    extent = np.full(2, radius)
    lo, hi = _center_bounds(size, extent, extent)
    center = rng.uniform(lo, hi)
    return {
        "shape": "circle",
        "center": center,
        "radius": float(radius),
        "area": float(math.pi * radius**2),
    }


def _triangle_angles(v: np.ndarray) -> np.ndarray:
    """Interior angles in radians of the triangle with vertices ``v`` (3, 2)."""
    angles = np.empty(3)
    for k in range(3):
        a = v[(k + 1) % 3] - v[k]
        b = v[(k + 2) % 3] - v[k]
        cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        angles[k] = math.acos(float(np.clip(cos, -1.0, 1.0)))
    return angles


def _triangle_area(v: np.ndarray) -> float:
    """Signed area of the triangle ``v`` (3, 2); positive for the vertex order
    that turns counter-clockwise in the (i, j) plane."""
    e1, e2 = v[1] - v[0], v[2] - v[0]
    return 0.5 * float(e1[0] * e2[1] - e1[1] * e2[0])


def _sample_triangle(size: int, rng: np.random.Generator) -> Dict[str, Any]:
    """Draw a non-degenerate triangle fully inside the image.

    Three points are drawn uniformly on a circle of random circumradius and the
    triangle is rejected unless all angles exceed ``TRIANGLE_MIN_ANGLE_DEG``,
    its inradius is at least ``TRIANGLE_MIN_INRADIUS * S`` and it can be placed
    inside the image margin with its centroid in the central window; the
    centroid is then drawn uniformly among the allowed positions.

    Returns a dict with ``vertices`` (3, 2) in pixels ``(i, j)`` in
    counter-clockwise order, ``center`` (2,) the centroid, ``incenter`` (2,),
    ``inradius`` in pixels, ``angles_deg`` (3,) and ``area`` in pixels^2.
    """
    min_angle = math.radians(TRIANGLE_MIN_ANGLE_DEG)
    for _ in range(10000):
        circumradius = rng.uniform(*TRIANGLE_CIRCUMRADIUS_RANGE) * size
        phi = rng.uniform(0.0, 2.0 * math.pi, size=3)
        v = circumradius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        angles = _triangle_angles(v)
        if angles.min() < min_angle:
            continue
        area = _triangle_area(v)
        if area < 0:
            v = v[::-1].copy()
            angles = angles[::-1].copy()
            area = -area
        sides = np.array([np.linalg.norm(v[(k + 2) % 3] - v[(k + 1) % 3]) for k in range(3)])
        inradius = 2.0 * area / sides.sum()
        if inradius < TRIANGLE_MIN_INRADIUS * size:
            continue
        v = v - v.mean(axis=0)
        lo, hi = _center_bounds(size, -v.min(axis=0), v.max(axis=0))
        if np.any(lo > hi):
            continue
        v = v + rng.uniform(lo, hi)
        incenter = (sides[:, None] * v).sum(axis=0) / sides.sum()
        return {
            "shape": "triangle",
            "vertices": v,
            "center": v.mean(axis=0),
            "incenter": incenter,
            "inradius": float(inradius),
            "angles_deg": np.degrees(angles),
            "area": float(area),
        }
    raise RuntimeError("could not sample a triangle; size too small?")


def _sdf_circle(ii: np.ndarray, jj: np.ndarray, params: Dict[str, Any]) -> np.ndarray:
    """Signed distance (pixels, negative inside) to the circle, shape (S, S)."""
    ci, cj = params["center"]
    return np.hypot(ii - ci, jj - cj) - params["radius"]


def _sdf_triangle(ii: np.ndarray, jj: np.ndarray, params: Dict[str, Any]) -> np.ndarray:
    """Exact signed distance (pixels, negative inside) to a counter-clockwise
    triangle, shape (S, S)."""
    v = params["vertices"]
    dist = np.full(ii.shape, np.inf)
    inside = np.ones(ii.shape, dtype=bool)
    for k in range(3):
        a, b = v[k], v[(k + 1) % 3]
        ei, ej = b - a
        pi_, pj = ii - a[0], jj - a[1]
        h = np.clip((pi_ * ei + pj * ej) / (ei * ei + ej * ej), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(pi_ - h * ei, pj - h * ej))
        inside &= (ei * pj - ej * pi_) >= 0
    return np.where(inside, -dist, dist)


def _render(params: Dict[str, Any], size: int, mode: str, edge_width: float) -> tuple:
    """Render one shape.

    Returns ``(image, label)``: ``float32`` (S, S) in [0, 1] and ``uint8``
    (S, S) in {0, 1}.
    """
    ii, jj = _grid(size)
    if params["shape"] == "circle":
        d = _sdf_circle(ii, jj, params)
    else:
        d = _sdf_triangle(ii, jj, params)
    if mode == "hollow":
        t = params["thickness"]
        d = np.abs(d + 0.5 * t) - 0.5 * t
    image = np.clip(0.5 - d / edge_width, 0.0, 1.0).astype(np.float32)
    label = (d < 0).astype(np.uint8)
    return image, label


def _hollow_band_area(params: Dict[str, Any]) -> float:
    """Area in pixels^2 of the band of thickness ``t`` inside the shape."""
    t = params["thickness"]
    if params["shape"] == "circle":
        r = params["radius"]
        return math.pi * (r**2 - (r - t) ** 2)
    inner_scale = 1.0 - t / params["inradius"]
    return params["area"] * (1.0 - inner_scale**2)


def make_tc_shape(
    shape: str,
    size: int = 128,
    mode: str = "solid",
    rng: RngLike = None,
    edge_width: float = 1.0,
) -> Dict[str, Any]:
    """Draw and render one random shape of a given class.

    Parameters
    ----------
    shape : ``'circle'`` or ``'triangle'``.
    size : image side ``S`` in pixels (spacing 1 mm).
    mode : ``'solid'`` or ``'hollow'``.
    rng : ``numpy.random.Generator``, integer seed or ``None``.
    edge_width : width in pixels of the anti-aliasing ramp.

    Returns
    -------
    dict with ``image`` (float32, (S, S), values in [0, 1]), ``label`` (uint8,
    (S, S), 1 on the bright region) and ``params``: the geometry (``center``
    (2,) in pixels ``(i, j)``, ``radius`` or ``vertices`` (3, 2), ...),
    ``thickness`` in pixels (hollow mode only) and ``label_area``, the exact
    area in pixels^2 of the bright region.
    """
    _check_args(size, mode)
    rng = np.random.default_rng(rng)
    if shape == "circle":
        params = _sample_circle(size, rng)
    elif shape == "triangle":
        params = _sample_triangle(size, rng)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if mode == "hollow":
        equivalent_radius = math.sqrt(params["area"] / math.pi)
        fraction = rng.uniform(*HOLLOW_THICKNESS_RANGE)
        params["thickness"] = max(HOLLOW_MIN_THICKNESS, fraction * equivalent_radius)
        params["label_area"] = _hollow_band_area(params)
    else:
        params["label_area"] = params["area"]
    image, label = _render(params, size, mode, edge_width)
    return {"image": image, "label": label, "params": params}


def make_tc_pair(
    size: int = 128,
    mode: str = "solid",
    rng: RngLike = None,
    edge_width: float = 1.0,
) -> Dict[str, Any]:
    """Draw one moving/fixed pair of the Triangles-and-Circles dataset.

    The shape class is a fair coin flip; both images then hold independent
    random shapes of that class.

    Parameters
    ----------
    size : image side ``S`` in pixels (spacing 1 mm); at least 16, 64 or more
        is sensible.
    mode : ``'solid'`` or ``'hollow'``.
    rng : ``numpy.random.Generator``, integer seed or ``None``.
    edge_width : width in pixels of the anti-aliasing ramp.

    Returns
    -------
    dict with
        ``moving``, ``fixed``: float32 (S, S), values in [0, 1];
        ``moving_label``, ``fixed_label``: uint8 (S, S), 0 background,
        1 bright region (the band only in hollow mode);
        ``shape``: ``'circle'`` or ``'triangle'``;
        ``mode``: the mode;
        ``moving_params``, ``fixed_params``: geometry, see :func:`make_tc_shape`.
    """
    _check_args(size, mode)
    rng = np.random.default_rng(rng)
    shape = SHAPES[int(rng.integers(2))]
    moving = make_tc_shape(shape, size, mode, rng, edge_width)
    fixed = make_tc_shape(shape, size, mode, rng, edge_width)
    return {
        "moving": moving["image"],
        "fixed": fixed["image"],
        "moving_label": moving["label"],
        "fixed_label": fixed["label"],
        "shape": shape,
        "mode": mode,
        "moving_params": moving["params"],
        "fixed_params": fixed["params"],
    }


def make_tc_dataset(n: int, size: int = 128, mode: str = "solid", seed: int = 0) -> Dict[str, np.ndarray]:
    """Draw ``n`` pairs reproducibly from ``seed``.

    Returns
    -------
    dict of stacked arrays:
        ``moving``, ``fixed``: float32 (N, S, S) in [0, 1];
        ``moving_label``, ``fixed_label``: uint8 (N, S, S);
        ``shape``: str array (N,) of ``'circle'`` / ``'triangle'``.
    """
    _check_args(size, mode)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    keys = ("moving", "fixed", "moving_label", "fixed_label")
    dtypes = (np.float32, np.float32, np.uint8, np.uint8)
    out: Dict[str, np.ndarray] = {k: np.empty((n, size, size), dtype=dt) for k, dt in zip(keys, dtypes)}
    shapes = []
    for idx in range(n):
        pair = make_tc_pair(size, mode, rng)
        for k in keys:
            out[k][idx] = pair[k]
        shapes.append(pair["shape"])
    out["shape"] = np.array(shapes, dtype="<U8")
    return out


def save_tc_pair_nifti(pair: Dict[str, Any], out_dir: Union[str, os.PathLike]) -> Dict[str, str]:
    """Write a pair as 2-D NIfTI files.

    Writes ``moving.nii.gz``, ``fixed.nii.gz`` (float32, (S, S)) and
    ``moving_label.nii.gz``, ``fixed_label.nii.gz`` (uint8, (S, S)) into
    ``out_dir`` (created if needed), each with affine ``diag(1, 1, 1, 1)``
    (spacing 1 mm, origin 0) and units of mm.

    Returns a dict mapping each key to the path written.
    """
    import nibabel as nib

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, dtype in (("moving", np.float32), ("fixed", np.float32),
                       ("moving_label", np.uint8), ("fixed_label", np.uint8)):
        data = np.asarray(pair[key], dtype=dtype)
        if data.ndim != 2:
            raise ValueError(f"{key} must be 2-D, got shape {data.shape}")
        img = nib.Nifti1Image(data, np.eye(4))
        img.header.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        path = os.path.join(os.fspath(out_dir), f"{key}.nii.gz")
        nib.save(img, path)
        paths[key] = path
    return paths
