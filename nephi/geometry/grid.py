"""Geometry: voxel grids, affines and the coordinate systems nephi uses.

Every coordinate change in the project goes through this module.

Coordinate systems of a grid with spatial shape ``(N_0, ..., N_{d-1})`` (d = 2 or 3):

* **index**: continuous voxel indices ``(i_0, ..., i_{d-1})`` in array-axis order.
* **normalized**: ``n_k = -1 + 2 i_k / (N_k - 1)`` (the ``align_corners=True`` convention):
  -1 and +1 are the centres of the first and last voxels. Same axis order as index.
* **RAS**: physical millimetres, ``ras = A @ [index, 1]`` with ``A`` the NIfTI affine (nibabel).
* **LPS**: physical millimetres as ITK, ANTs and Slicer use them: x and y of RAS negated.

Registration works in the *frame* of the fixed image: its normalized coordinates, extended
linearly beyond [-1, 1] (the frame is an affine image of physical space, so a point outside the
fixed field of view is still a well-defined physical point). The moving image is sampled by
mapping frame points to the moving image's normalized coordinates through physical space, never
by index.

2-D images use the in-plane 3x3 block of the NIfTI affine (rows/columns x, y and translation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nibabel.affines import apply_affine


__all__ = ["Grid", "ras_lps_flip", "ras_to_lps", "lps_to_ras", "apply_affine", "apply_affine_torch",
           "affine_from_lps", "spatial_affine", "nifti_affine", "to_grid_sample_order"]


def ras_lps_flip(d: int) -> np.ndarray:
    """The (d, d) matrix that turns RAS vectors into LPS vectors and back (d = 2 or 3): x and y
    change sign. The one statement of that convention in nephi."""
    return np.diag([-1.0, -1.0, 1.0][:d])


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """RAS mm (..., d) -> LPS mm (..., d) as float64 (its own inverse: :func:`lps_to_ras`)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ ras_lps_flip(points.shape[-1])


lps_to_ras = ras_to_lps


def apply_affine_torch(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous (d+1, d+1) numpy matrix to a tensor of points (..., d)."""
    d = matrix.shape[0] - 1
    lin = torch.as_tensor(matrix[:d, :d], dtype=points.dtype, device=points.device)
    off = torch.as_tensor(matrix[:d, d], dtype=points.dtype, device=points.device)
    return points @ lin.T + off


def affine_from_lps(origin, spacing, direction) -> np.ndarray:
    """The (d+1, d+1) voxel -> RAS affine of ITK's LPS origin (d,), spacing (d,) mm and
    direction ((d, d), or its d*d values row by row; column k: the direction of voxel axis k)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    d = spacing.size
    flip = ras_lps_flip(d)
    affine = np.eye(d + 1)
    affine[:d, :d] = flip @ np.asarray(direction, dtype=np.float64).reshape(d, d) @ np.diag(spacing)
    affine[:d, d] = flip @ np.asarray(origin, dtype=np.float64)
    return affine


def spatial_affine(nifti_affine: np.ndarray, ndim: int) -> np.ndarray:
    """The (ndim+1, ndim+1) voxel->RAS affine of a grid from a 4x4 NIfTI affine."""
    nifti_affine = np.asarray(nifti_affine, dtype=np.float64)
    if ndim == 3:
        return nifti_affine.copy()
    keep = [0, 1, 3]
    return nifti_affine[np.ix_(keep, keep)].copy()


def nifti_affine(affine: np.ndarray) -> np.ndarray:
    """The 4x4 NIfTI affine of a grid affine of size 3x3 (2-D) or 4x4 (3-D)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (4, 4):
        return affine.copy()
    out = np.eye(4)
    keep = [0, 1, 3]
    out[np.ix_(keep, keep)] = affine
    return out


@dataclass(frozen=True)
class Grid:
    """A voxel grid: spatial ``shape`` (d,) and ``affine`` (d+1, d+1), voxel index -> RAS mm."""

    shape: tuple
    affine: np.ndarray

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        affine = np.asarray(self.affine, dtype=np.float64)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)
        if len(shape) not in (2, 3):
            raise ValueError(f"a grid is 2-D or 3-D, got shape {shape}")
        if affine.shape != (len(shape) + 1,) * 2:
            raise ValueError(f"affine of a {len(shape)}-D grid must be {(len(shape) + 1,) * 2}")
        if min(shape) < 2:
            raise ValueError(f"every axis needs at least 2 voxels, got shape {shape}")
        if abs(np.linalg.det(affine[:-1, :-1])) < 1e-12:
            raise ValueError("affine is singular")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each array axis in mm (column norms of the affine)."""
        return np.linalg.norm(self.affine[:-1, :-1], axis=0)

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nifti_affine(self) -> np.ndarray:
        return nifti_affine(self.affine)

    # --- matrices between coordinate systems (homogeneous, float64) ---
    @property
    def index_to_normalized(self) -> np.ndarray:
        scale = 2.0 / (np.asarray(self.shape, dtype=np.float64) - 1.0)
        m = np.diag(np.append(scale, 1.0))
        m[:-1, -1] = -1.0
        return m

    @property
    def normalized_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_normalized)

    @property
    def normalized_to_ras(self) -> np.ndarray:
        return self.affine @ self.normalized_to_index

    @property
    def ras_to_normalized(self) -> np.ndarray:
        return np.linalg.inv(self.normalized_to_ras)

    @property
    def ras_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    def normalized_mm_scale(self) -> np.ndarray:
        """mm per normalized unit along each axis: (N_k - 1) * spacing_k / 2."""
        return (np.asarray(self.shape, dtype=np.float64) - 1.0) * self.spacing / 2.0

    # --- point conversions ---
    def index_to_ras_points(self, index: np.ndarray) -> np.ndarray:
        return apply_affine(self.affine, index)

    def ras_to_index_points(self, ras: np.ndarray) -> np.ndarray:
        return apply_affine(self.ras_to_index, ras)

    def normalized_to_ras_points(self, x: np.ndarray) -> np.ndarray:
        return apply_affine(self.normalized_to_ras, x)

    def ras_to_normalized_points(self, ras: np.ndarray) -> np.ndarray:
        return apply_affine(self.ras_to_normalized, ras)

    def frame_to(self, other: "Grid") -> np.ndarray:
        """Homogeneous matrix: this grid's normalized coords -> ``other``'s normalized coords."""
        return other.ras_to_normalized @ self.normalized_to_ras

    def normalized_points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Normalized coordinates of every voxel centre, shape (*shape, d), array-axis order."""
        axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in self.shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def lps_geometry(self) -> tuple:
        """The grid as ITK states it: (origin (d,) LPS mm, spacing (d,) mm, direction (d, d)
        whose column k is the LPS unit vector of voxel axis k)."""
        d, flip = self.ndim, ras_lps_flip(self.ndim)
        return (flip @ self.affine[:d, d], self.spacing,
                flip @ (self.affine[:d, :d] / self.spacing))

    @staticmethod
    def from_lps(shape, origin, spacing, direction) -> "Grid":
        """The grid of an ITK image: inverse of :meth:`lps_geometry`."""
        return Grid(tuple(int(n) for n in shape), affine_from_lps(origin, spacing, direction))

    def same_as(self, other: "Grid", tol: float = 1e-4) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=tol)


def to_grid_sample_order(points: torch.Tensor) -> torch.Tensor:
    """Array-axis-order normalized coords (..., d) -> the order ``grid_sample`` wants.

    ``torch.nn.functional.grid_sample`` takes the coordinate of the LAST array axis first. This is
    the only place in nephi where that flip happens.
    """
    return points.flip(-1)
