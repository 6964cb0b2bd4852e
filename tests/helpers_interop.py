"""Synthetic pairs for the interop tests: one smooth anatomy rendered on grids of any shape,
spacing and orientation (the anatomy is defined in physical RAS millimetres, never in voxels).
"""

from __future__ import annotations

import numpy as np
import nibabel as nib

from nephi.geometry.grid import Grid


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def rotation_2d(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def centred_grid(shape, columns: np.ndarray, centre) -> Grid:
    """Grid whose voxel axes are the columns of ``columns`` (RAS mm per voxel) and whose
    central voxel sits at ``centre`` (RAS mm)."""
    shape = tuple(shape)
    d = len(shape)
    affine = np.eye(d + 1)
    affine[:d, :d] = columns
    mid = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:d, d] = np.asarray(centre, dtype=np.float64) - columns @ mid
    return Grid(shape, affine)


class Phantom:
    """Sum of Gaussian blobs (centres and widths in mm), seen through a rigid+scale map.

    ``value(points_ras)`` is the intensity at physical points. ``moved(matrix, offset)`` returns
    the same anatomy displaced: its intensity at y is this phantom's at ``matrix @ y + offset``.
    """

    def __init__(self, ndim: int, extent_mm: float, count: int = 24, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.ndim = ndim
        self.centres = rng.uniform(-extent_mm, extent_mm, size=(count, ndim))
        self.sigmas = rng.uniform(0.12, 0.25, size=count) * extent_mm
        self.weights = rng.uniform(0.4, 1.0, size=count)
        self.matrix = np.eye(ndim)
        self.offset = np.zeros(ndim)

    def moved(self, matrix: np.ndarray, offset) -> "Phantom":
        out = Phantom.__new__(Phantom)
        out.__dict__.update(self.__dict__)
        out.matrix = self.matrix @ np.asarray(matrix, dtype=np.float64)
        out.offset = self.matrix @ np.asarray(offset, dtype=np.float64) + self.offset
        return out

    def value(self, points_ras: np.ndarray) -> np.ndarray:
        p = np.asarray(points_ras, dtype=np.float64) @ self.matrix.T + self.offset
        diff = p[..., None, :] - self.centres
        r2 = np.sum(diff ** 2, axis=-1)
        return np.sum(self.weights * np.exp(-0.5 * r2 / self.sigmas ** 2), axis=-1)

    def render(self, grid: Grid) -> np.ndarray:
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
        ras = grid.index_to_ras_points(idx.reshape(-1, grid.ndim).astype(np.float64))
        return (100.0 * self.value(ras)).reshape(grid.shape).astype(np.float32)


def save_nifti(path, data: np.ndarray, grid: Grid) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), grid.nifti_affine)
    img.header.set_qform(grid.nifti_affine, code=1)
    img.header.set_sform(grid.nifti_affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))
