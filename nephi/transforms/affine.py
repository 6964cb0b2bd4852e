"""Affine transforms in physical space, and the same transform as a point map of a grid's frame.

An :class:`Affine` holds the homogeneous matrix of y = A x + t from FIXED physical points x to
MOVING physical points y (RAS mm), the pull-back direction of every transform in nephi (the
aligned moving image is I_A(A x + t) on the fixed grid). ITK, ANTs and Slicer store the same
transform in LPS: A_lps = F A F, t_lps = F t with F = diag(-1, -1, 1)
(:func:`nephi.geometry.grid.ras_lps_flip`); reading and writing ITK files is in
:mod:`nephi.io.itk`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nephi.geometry.grid import Grid, apply_affine, apply_affine_torch
from nephi.transforms.displacement import Field


__all__ = ["Affine", "FrameAffine"]


@dataclass(frozen=True)
class Affine:
    """y = A x + t, fixed RAS mm -> moving RAS mm; ``matrix`` is (d+1, d+1) homogeneous."""

    matrix: np.ndarray

    def __post_init__(self):
        m = np.asarray(self.matrix, dtype=np.float64)
        d = m.shape[0] - 1
        if m.shape != (d + 1, d + 1) or d not in (2, 3):
            raise ValueError(f"an affine of 2-D or 3-D points is 3x3 or 4x4, got {m.shape}")
        if abs(np.linalg.det(m[:d, :d])) < 1e-12:
            raise ValueError("the affine is singular")
        object.__setattr__(self, "matrix", m)

    @staticmethod
    def identity(d: int) -> "Affine":
        return Affine(np.eye(d + 1))

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0] - 1

    def __call__(self, points_ras: np.ndarray) -> np.ndarray:
        """Points (N, d) RAS mm -> (N, d)."""
        return apply_affine(self.matrix, points_ras)

    def inverse(self) -> "Affine":
        return Affine(np.linalg.inv(self.matrix))

    def then(self, other: "Affine") -> "Affine":
        """The affine x -> other(self(x))."""
        return Affine(other.matrix @ self.matrix)

    def field_before(self, whole: Field) -> Field:
        """The displacement field f on ``whole``'s grid with x + d(x) = self(x + f(x)): what
        remains of the map x -> x + d(x) (``whole``) once this affine is taken off its end."""
        grid, d = whole.grid, whole.grid.ndim
        inverse = self.inverse().matrix
        lin = inverse[:d, :d]
        # f = inverse(x + D) - x = lin D + (lin - I) x + t, and x is affine in the voxel index:
        # the second part is a sum of one ramp per axis (no grid of points is built).
        ramp = (lin - np.eye(d)) @ grid.affine[:d]
        out = whole.disp @ lin.T
        out += ramp[:, d] + inverse[:d, d]
        for k, n in enumerate(grid.shape):
            shape = [1] * d + [d]
            shape[k] = n
            out += (np.arange(n)[:, None] * ramp[:, k]).reshape(shape)
        return Field(out, grid)

    def in_frame(self, grid: Grid) -> "FrameAffine":
        """The same transform as a point map of ``grid``'s normalized frame (fixed frame points
        -> moving physical points expressed in the fixed frame's coordinates)."""
        to_ras = grid.normalized_to_ras
        return FrameAffine(np.linalg.inv(to_ras) @ self.matrix @ to_ras)

    def parts(self) -> dict:
        """Rotation (degrees, of the closest rotation), translation (mm), scales (singular
        values) and shear-free check of the linear part: what ``summary.json`` reports."""
        d = self.ndim
        lin, t = self.matrix[:d, :d], self.matrix[:d, d]
        u, scales, vt = np.linalg.svd(lin)
        rot = u @ vt
        angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - (d - 2)) / 2.0, -1.0, 1.0))))
        return {"rotation_deg": angle, "translation_mm": [float(v) for v in t],
                "translation_norm_mm": float(np.linalg.norm(t)),
                "scales": [float(v) for v in scales],
                "matrix": self.matrix.tolist()}


class FrameAffine:
    """x -> M x for frame points (B, N, d), with its Jacobian (the constant linear part)."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.asarray(matrix, dtype=np.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_affine_torch(self.matrix, x)

    def value_and_jacobian(self, x: torch.Tensor) -> tuple:
        d = x.shape[-1]
        lin = torch.as_tensor(self.matrix[:d, :d], dtype=x.dtype, device=x.device)
        return self(x), lin.expand(*x.shape[:-1], d, d)
