"""The Jacobian determinant of a saved displacement field (``nephi-jacobian``).

A field (see :mod:`nephi.transforms.displacement`) on a grid with voxel->RAS affine
``x = A i + t`` maps a physical point x (RAS mm) to phi(x) = x + d(x). Its Jacobian is

    D phi(x) = I + D d(x),   D d = (dd / di) A^-1,

where ``dd / di`` (d, d) holds the finite differences of every displacement component along
every voxel axis (``np.gradient``: central differences inside, one-sided at the border) and
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

from nephi.errors import NephiInputError
from nephi.io.atomic import check_output_path, write_file
from nephi.io.fields import read_field
from nephi.io.images import save_image
from nephi.results.metrics import folding_percent
from nephi.transforms.displacement import Field


__all__ = ["field_jacobian", "log_jacobian", "resolve_field_path", "jacobian_file"]

FORWARD_FIELD = "warp.nii.gz"


def field_jacobian(field: Field) -> np.ndarray:
    """det(I + D d) at every voxel of ``field.grid`` -> float64 (*S).

    ``field.disp`` (*S, d) RAS mm; derivatives with respect to physical coordinates (see the
    module docstring), so any affine (rotation, shear, anisotropic spacing) is handled.
    """
    disp = np.asarray(field.disp, dtype=np.float64)
    d = field.grid.ndim
    if disp.shape != (*field.grid.shape, d):
        raise ValueError(f"field_jacobian: displacement of shape {disp.shape} does not match "
                         f"the grid {field.grid.shape} (+ {d} components)")
    # per_index[..., c, k] = d disp_c / d i_k  (voxel units)
    per_index = np.stack([np.stack(np.gradient(disp[..., c], axis=tuple(range(d))), axis=-1)
                          for c in range(d)], axis=-2)
    inv_linear = np.linalg.inv(field.grid.affine[:d, :d])
    jac = per_index @ inv_linear + np.eye(d)  # (*S, d, d): d phi_c / d x_j
    return np.linalg.det(jac)


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
        inner = os.path.join(path, FORWARD_FIELD)
        if not os.path.isfile(inner):
            raise NephiInputError(f"{what} {path}: is a folder without {FORWARD_FIELD}; give a "
                                  "displacement-field file or a nephi-infer --out folder")
        return inner
    return path


def jacobian_file(field_path: str, out_path: str, log: bool = False) -> dict:
    """``nephi-jacobian``: det D phi (or its log, ``log``) of the field at ``field_path`` (a file
    or a result folder) written to ``out_path`` as float32 on the field's grid.

    Returns a dict: ``field`` (file used), ``shape``, ``min`` / ``max`` of the determinant,
    ``folding_percent`` (share of voxels with det <= 0, in percent) and ``log``.
    """
    check_output_path(out_path, suffixes=(".nii", ".nii.gz"))
    path = resolve_field_path(field_path)
    field = read_field(path)
    det = field_jacobian(field)
    data = log_jacobian(det) if log else det
    write_file(out_path, lambda tmp: save_image(tmp, data, field.grid, dtype=np.float32))
    return {"field": path, "shape": tuple(field.grid.shape), "min": float(det.min()),
            "max": float(det.max()), "folding_percent": folding_percent(det), "log": log}
