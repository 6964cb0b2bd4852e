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

from nephi.geometry.grid import Grid
from nephi.geometry.sampling import sample_image


__all__ = ["Field", "map_points", "outside_grid"]


def map_points(points_ras: np.ndarray, disp_ras: np.ndarray, grid: Grid) -> np.ndarray:
    """p -> p + d(p) for points (N, d) in RAS mm and a displacement field (*S, d) on ``grid``."""
    points_ras = np.asarray(points_ras, dtype=np.float64)
    d = grid.ndim
    index = grid.ras_to_index_points(points_ras)
    norm = torch.as_tensor(grid.ras_to_normalized_points(points_ras), dtype=torch.float64)
    field = torch.as_tensor(np.asarray(disp_ras, dtype=np.float64)).movedim(-1, 0).unsqueeze(0)
    disp = sample_image(field, norm.reshape(1, -1, d), padding="border")[0].T.numpy()
    # ITK: inside the buffer means continuous index in [-0.5, N - 0.5]; zero displacement outside
    inside = np.all((index >= -0.5) & (index <= np.asarray(grid.shape) - 0.5), axis=1)
    return points_ras + disp * inside[:, None]


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
