"""The point-map contract every transform in nephi follows, and composition of maps.

A **point map** takes points ``x`` of shape (B, N, d) (d = 2 or 3) and returns their images of the
same shape. Its one documented direction is that of a pull-back (A = moving, B = fixed): phi_AB
maps FIXED-frame points to MOVING-frame points, so the warped moving image is I_A(phi_AB(x)).
Points are in the frame of some grid (normalized coordinates, see :mod:`nephi.geometry.grid`)
unless a map says otherwise.

A map may also provide ``value_and_jacobian(x) -> (y (B, N, d), J (B, N, d, d))`` with
``J[..., i, j] = d y_i / d x_j``, carried through the computation beside the values (no double
backward); :func:`nephi.transforms.jacobian.jacobian` uses it with the ``"analytic"`` method.
Composition and change of frame are objects (:class:`Composition`, :class:`Conjugated`), so the
analytic Jacobian survives them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from nephi.geometry.grid import apply_affine_torch


__all__ = ["PointMap", "DifferentiableMap", "Composition", "Conjugated", "has_jacobian",
           "evaluate_chunked", "grid_points", "on_grid"]


class PointMap(Protocol):
    """x (B, N, d) -> phi(x) (B, N, d); points are treated independently of each other."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ...


@runtime_checkable
class DifferentiableMap(Protocol):
    """A :class:`PointMap` that also gives its exact spatial Jacobian in the same pass."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ...

    def value_and_jacobian(self, x: torch.Tensor) -> tuple:
        """(phi(x) (B, N, d), J (B, N, d, d)) with ``J[..., i, j] = d phi_i / d x_j``."""
        ...


def has_jacobian(fn) -> bool:
    """Whether ``fn`` provides ``value_and_jacobian`` (the ``"analytic"`` Jacobian method)."""
    return isinstance(fn, DifferentiableMap)


@torch.no_grad()
def evaluate_chunked(fn: PointMap, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """Apply a point map (1, n, d) -> (1, n, d) to points (M, d) in chunks -> (M, d)."""
    out = torch.empty_like(points)
    for start in range(0, points.shape[0], chunk):
        stop = min(start + chunk, points.shape[0])
        out[start:stop] = fn(points[start:stop].unsqueeze(0))[0]
    return out


def grid_points(shape, device=None, first=None) -> torch.Tensor:
    """Frame coordinates of the voxel centres of a regular grid of ``shape`` over [-1, 1]^d
    (voxel i at -1 + 2 i / (N - 1), align_corners), row-major -> (M, d); ``first``: a slice
    of first-axis indices (a slab)."""
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device) for n in shape]
    if first is not None:
        axes[0] = axes[0][first]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


@torch.no_grad()
def on_grid(fn: PointMap, shape, chunk: int, device=None) -> torch.Tensor:
    """``fn`` at every voxel centre of a regular frame grid of ``shape`` (:func:`grid_points`)
    -> (M, d), in chunks of ``chunk`` points. A map with its own ``on_grid(shape, chunk,
    device)`` (a faster way to the same values on such a grid) is asked for it; any other map
    is called on the points."""
    own = getattr(fn, "on_grid", None)
    if own is not None:
        return own(shape, chunk, device)
    return evaluate_chunked(fn, grid_points(shape, device), chunk)


class Composition:
    """The point map x -> outer(inner(x)) on (B, N, d) points (``inner`` acts first).

    ``value_and_jacobian`` applies the chain rule, J = J_outer(inner(x)) J_inner(x), when both
    maps provide it.
    """

    def __init__(self, outer: PointMap, inner: PointMap):
        self.outer = outer
        self.inner = inner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))

    def on_grid(self, shape, chunk: int, device=None) -> torch.Tensor:
        """The map at every voxel centre of a regular frame grid (:func:`on_grid`) -> (M, d):
        ``outer`` applied to ``inner``'s values on that grid."""
        return evaluate_chunked(self.outer, on_grid(self.inner, shape, chunk, device), chunk)

    def value_and_jacobian(self, x: torch.Tensor) -> tuple:
        y, j_inner = self.inner.value_and_jacobian(x)
        z, j_outer = self.outer.value_and_jacobian(y)
        return z, j_outer @ j_inner


class Conjugated:
    """A map of one frame seen from another: x -> M^-1 phi(M x).

    ``to_inner`` (homogeneous (d+1, d+1) numpy matrix M) takes points of the outer frame (e.g.
    the fixed image's) to the frame ``inner`` works in (e.g. a trained network's grid).
    """

    def __init__(self, inner: PointMap, to_inner: np.ndarray):
        self.inner = inner
        self.to_inner = np.asarray(to_inner, dtype=np.float64)
        self.from_inner = np.linalg.inv(self.to_inner)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_affine_torch(self.from_inner, self.inner(apply_affine_torch(self.to_inner, x)))

    def value_and_jacobian(self, x: torch.Tensor) -> tuple:
        d = x.shape[-1]
        y, jac = self.inner.value_and_jacobian(apply_affine_torch(self.to_inner, x))
        lin_in = torch.as_tensor(self.to_inner[:d, :d], dtype=x.dtype, device=x.device)
        lin_out = torch.as_tensor(self.from_inner[:d, :d], dtype=x.dtype, device=x.device)
        return apply_affine_torch(self.from_inner, y), lin_out @ jac @ lin_in
