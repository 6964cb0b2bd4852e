"""Mapping points with displacement fields, and landmark errors, all in RAS millimetres.

A forward field lives on the fixed grid: a fixed point p goes to the moving point p + d(p), with
d linearly interpolated (border values up to half a voxel outside the grid, zero beyond), as
ITK's DisplacementFieldTransform does. That is how ``landmarks_moving.csv`` is computed, so any ITK tool maps points the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from .geometry import Grid
from .sampling import sample_image


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


def landmark_errors(mapped: np.ndarray, target: np.ndarray) -> dict:
    """Euclidean distances (mm) between corresponding rows, summarized."""
    dist = np.linalg.norm(np.asarray(mapped) - np.asarray(target), axis=1)
    return {
        "mean_mm": float(dist.mean()),
        "std_mm": float(dist.std()),
        "p95_mm": float(np.percentile(dist, 95)),
        "max_mm": float(dist.max()),
        "count": int(dist.size),
    }
