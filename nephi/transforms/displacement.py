"""Dense displacement fields as point maps in physical space (RAS millimetres).

A field lives on a grid and maps a point p of that grid's space to p + d(p), with d linearly
interpolated between voxel centres, border values up to half a voxel outside the grid and zero
beyond: exactly what ITK's ``DisplacementFieldTransform`` does, so any ITK tool maps points as
nephi does. A forward field (``warp.nii.gz``) lives on the fixed grid and maps fixed points to
moving points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.sampling import sample_image


__all__ = ["Field", "FrameField", "map_points", "outside_grid"]


def _displace(points_ras: torch.Tensor, table: torch.Tensor, grid: Grid) -> torch.Tensor:
    """p -> p + d(p) for points (B, N, d) in RAS mm, ``table`` (1, d, *S) the displacement
    (RAS mm) on ``grid``, in the points' dtype and device; ITK's rule outside (module docstring)."""
    norm = apply_affine_torch(grid.ras_to_normalized, points_ras)
    # ITK's buffer test: zero displacement beyond half a voxel outside the outermost centres
    disp = sample_image(table.expand(points_ras.shape[0], *table.shape[1:]), norm,
                        padding="itk").transpose(1, 2)
    return points_ras + disp


def _displacement_table(disp_ras: np.ndarray, dtype=torch.float64, device=None) -> torch.Tensor:
    """A displacement field (*S, d) as the (1, d, *S) tensor :func:`_displace` samples."""
    field = torch.as_tensor(np.asarray(disp_ras), dtype=dtype, device=device)
    return field.movedim(-1, 0).unsqueeze(0)


def map_points(points_ras: np.ndarray, disp_ras: np.ndarray, grid: Grid) -> np.ndarray:
    """p -> p + d(p) for points (N, d) in RAS mm and a displacement field (*S, d) on ``grid``."""
    points = torch.as_tensor(np.asarray(points_ras, dtype=np.float64)).unsqueeze(0)
    return _displace(points, _displacement_table(disp_ras), grid)[0].numpy()


def outside_grid(points_ras: np.ndarray, grid: Grid) -> np.ndarray:
    """(N,) bool: the point lies outside ``grid`` (beyond its outermost voxel centres)."""
    index = grid.ras_to_index_points(points_ras)
    upper = np.asarray(grid.shape, dtype=np.float64) - 1.0
    return ~np.all((index >= 0.0) & (index <= upper), axis=-1)


@dataclass
class Field:
    """A displacement field: ``disp`` (*S, d) float64 RAS mm on ``grid``; ``path`` its file
    ("" when it was never written). Calling it maps points (N, d) RAS mm: p -> p + d(p)."""

    disp: np.ndarray
    grid: Grid
    path: str = ""

    def __call__(self, points_ras: np.ndarray) -> np.ndarray:
        return map_points(points_ras, self.disp, self.grid)

    def in_frame(self, grid: Grid) -> "FrameField":
        """The same map as a point map of ``grid``'s normalized frame (fixed frame points ->
        moving physical points expressed in that frame's coordinates), as
        :meth:`nephi.transforms.affine.Affine.in_frame` does for an affine."""
        return FrameField(self, grid)


class FrameField:
    """A :class:`Field` seen in a grid's frame: x (B, N, d) -> M^-1 phi(M x), M the grid's
    normalized -> RAS matrix and phi the field's map p -> p + d(p) (RAS mm)."""

    def __init__(self, field: Field, grid: Grid):
        self.field, self.grid = field, grid
        self._tables: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self._tables:
            self._tables[key] = _displacement_table(self.field.disp, x.dtype, x.device)
        ras = apply_affine_torch(self.grid.normalized_to_ras, x)
        moved = _displace(ras, self._tables[key], self.field.grid)
        return apply_affine_torch(self.grid.ras_to_normalized, moved)
