"""Reading and writing displacement fields that ITK, ANTs, SimpleITK and 3D Slicer read directly.

An ITK displacement field in NIfTI: array (X, Y, Z, 1, 3) (2-D: (X, Y, 1, 1, 2)), float32,
intent code 1007 (vector), the affine of the grid it lives on, vector values in LPS millimetres.
For the forward transform the grid is the fixed image's and a fixed point p (LPS) corresponds to
the moving point p + d(p).
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import Grid, ras_to_lps, spatial_affine
from nephi.io.images import save_image
from nephi.transforms.displacement import Field


__all__ = ["NIFTI_INTENT_VECTOR", "displacement_to_itk_array", "write_displacement_field",
           "read_displacement_field", "read_field", "save_scalar"]

NIFTI_INTENT_VECTOR = 1007


def displacement_to_itk_array(disp_ras: np.ndarray) -> np.ndarray:
    """RAS-mm displacement (*S, d) -> ITK NIfTI layout (X, Y, Z, 1, d) in LPS mm, float32."""
    lps = ras_to_lps(disp_ras).astype(np.float32)
    spatial = lps.shape[:-1]
    d = lps.shape[-1]
    if len(spatial) == 2:
        return lps.reshape(spatial[0], spatial[1], 1, 1, d)
    return lps.reshape(*spatial, 1, d)


def write_displacement_field(path: str, disp_ras: np.ndarray, grid: Grid) -> None:
    """Write a displacement field given in RAS mm on ``grid`` as an ITK vector NIfTI."""
    arr = displacement_to_itk_array(disp_ras)
    img = nib.Nifti1Image(arr, grid.nifti_affine)
    img.header.set_intent(NIFTI_INTENT_VECTOR)
    img.header.set_qform(grid.nifti_affine, code=1)
    img.header.set_sform(grid.nifti_affine, code=1)
    img.header.set_xyzt_units("mm")
    if path.endswith(".gz"):
        # Stored, not deflated: a field's float values shrink by only 7-20 % at gzip level 1,
        # which takes a tenth of a second per field, a good part of a feed-forward registration.
        with gzip.open(path, "wb", compresslevel=0) as fh:
            fh.write(img.to_bytes())
    else:
        nib.save(img, path)


def read_displacement_field(path: str) -> tuple:
    """Read an ITK vector NIfTI -> (displacement (*S, d) in RAS mm, Grid)."""
    img = nib.load(path)
    arr = np.asarray(img.dataobj, dtype=np.float64)
    d = arr.shape[-1]
    spatial = arr.shape[:d] if d == 3 else arr.shape[:2]
    disp_lps = arr.reshape(*spatial, d)
    grid = Grid(spatial, spatial_affine(img.affine, d))
    return ras_to_lps(disp_lps), grid


def save_scalar(path: str, data: np.ndarray, grid: Grid) -> None:
    """Write a float32 scalar map on ``grid`` (e.g. the Jacobian determinant)."""
    save_image(path, data, grid, dtype=np.float32)


def read_field(path: str) -> Field:
    """Read an ITK displacement-field NIfTI -> :class:`Field` (RAS mm); input errors name it."""
    try:
        img = nib.load(path)
        shape = img.shape
    except Exception as exc:
        raise NephiInputError(f"{path}: not a readable NIfTI file ({short_reason(exc)})") from None
    d = shape[-1] if len(shape) == 5 else 0
    expected = (len(shape) == 5 and d in (2, 3) and shape[3] == 1
                and (d == 3 or shape[2] == 1))
    if not expected:
        raise NephiInputError(f"{path}: shape {tuple(shape)} is not an ITK displacement field "
                              "(X, Y, Z, 1, 3) or (X, Y, 1, 1, 2)")
    try:
        disp, grid = read_displacement_field(path)
    except Exception as exc:
        raise NephiInputError(f"{path}: cannot be read as a displacement field "
                              f"({short_reason(exc)})") from None
    if not np.all(np.isfinite(disp)):
        raise NephiInputError(f"{path}: holds NaN or infinite displacements")
    return Field(disp=disp, grid=grid, path=path)
