"""The Jacobian determinant of a saved displacement field (``nephi-jacobian``).

A field (see :mod:`nephi.transforms.displacement`) on a grid with voxel->RAS affine
``x = A i + t`` maps a physical point x (RAS mm) to phi(x) = x + d(x). Its Jacobian is

    D phi(x) = I + D d(x),   D d = (dd / di) A^-1,

where ``dd / di`` (d, d) holds the finite differences of every displacement component along
every voxel axis (central differences inside, one-sided at the border) and
A = affine[:d, :d] is the grid's linear part (direction times spacing). Converting with A^-1
makes the derivatives physical ones, so the result is right for any orientation (oblique grids)
and anisotropic spacing. det D phi is the same in RAS and LPS (the flip cancels), so it is
the determinant ITK and ANTs mean.

* det > 1: local expansion, 0 < det < 1: compression, det <= 0: folding (phi not invertible).
* :func:`log_jacobian`: natural log where det > 0 and NaN where det <= 0 (a fold has no log).

Any ITK displacement-field NIfTI works (nephi's ``warp.nii.gz`` / ``inverse_warp.nii.gz``,
ANTs' ``*Warp.nii.gz``), 2-D or 3-D.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from nephi.errors import NephiInputError
from nephi.io.atomic import check_output_path, write_file
from nephi.io.fields import read_field
from nephi.io.images import save_image
from nephi.io.layout import FORWARD, IMAGE_SUFFIXES
from nephi.results.metrics import folding_percent
from nephi.transforms.displacement import Field
from nephi.transforms.jacobian import jacobian_determinant_dense


__all__ = ["field_jacobian", "log_jacobian", "resolve_field_path", "jacobian_file"]

def field_jacobian(field: Field) -> np.ndarray:
    """det(I + D d) at every voxel of ``field.grid`` -> float64 (*S).

    ``field.disp`` (*S, d) RAS mm; derivatives with respect to physical coordinates (see the
    module docstring), so any affine (rotation, shear, anisotropic spacing) is handled: the map
    is taken to voxel indices of its own grid, i -> A^-1 (x(i) + d(x(i)) - t), whose
    determinant det(A^-1 (A + dd/di)) = det(I + (dd/di) A^-1) is that of D phi
    (:func:`nephi.transforms.jacobian.jacobian_determinant_dense`).
    """
    disp = np.asarray(field.disp, dtype=np.float64)
    grid, d = field.grid, field.grid.ndim
    if disp.shape != (*grid.shape, d):
        raise ValueError(f"field_jacobian: displacement of shape {disp.shape} does not match "
                         f"the grid {grid.shape} (+ {d} components)")
    index = np.indices(grid.shape, dtype=np.float64)  # (d, *S)
    mapped = index + np.moveaxis(disp @ np.linalg.inv(grid.affine[:d, :d]).T, -1, 0)
    return jacobian_determinant_dense(torch.from_numpy(mapped)).numpy()


def log_jacobian(det: np.ndarray) -> np.ndarray:
    """Natural log of a Jacobian-determinant map -> float64, same shape.

    log(det) where det > 0; NaN where det <= 0 (folds: the map is not orientation-preserving
    there and has no log). NaN input stays NaN.
    """
    det = np.asarray(det, dtype=np.float64)
    out = np.full(det.shape, np.nan)
    positive = det > 0
    out[positive] = np.log(det[positive])
    return out


def resolve_field_path(path: str, what: str = "FIELD") -> str:
    """A displacement-field file, or the ``warp.nii.gz`` of a result folder -> the file's path."""
    if not path:
        raise NephiInputError(f"{what}: empty file name")
    if not os.path.exists(path):
        raise NephiInputError(f"{what} {path}: not found")
    if os.path.isdir(path):
        inner = os.path.join(path, FORWARD)
        if not os.path.isfile(inner):
            raise NephiInputError(f"{what} {path}: is a folder without {FORWARD}; give a "
                                  "displacement-field file or a nephi-infer --out folder")
        return inner
    return path


def jacobian_file(field_path: str, out_path: str, log: bool = False) -> dict:
    """``nephi-jacobian``: det D phi (or its log, ``log``) of the field at ``field_path`` (a file
    or a result folder) written to ``out_path`` as float32 on the field's grid.

    Returns a dict: ``field`` (file used), ``shape``, ``min`` / ``max`` of the determinant,
    ``folding_percent`` (share of voxels with det <= 0, in percent) and ``log``.
    """
    check_output_path(out_path, suffixes=IMAGE_SUFFIXES)
    path = resolve_field_path(field_path)
    field = read_field(path)
    det = field_jacobian(field)
    data = log_jacobian(det) if log else det
    write_file(out_path, lambda tmp: save_image(tmp, data, field.grid, dtype=np.float32))
    return {"field": path, "shape": tuple(field.grid.shape), "min": float(det.min()),
            "max": float(det.max()), "folding_percent": folding_percent(det), "log": log}
