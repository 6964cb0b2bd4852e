"""Reading and writing images and masks, with the checks users need.

Images are 2-D or 3-D (a trailing singleton axis is dropped): NIfTI (``.nii``, ``.nii.gz``,
nibabel), NRRD, MetaImage and DICOM series (SimpleITK, :mod:`nephi.io.itk_images`).
Point sets are read and written by :mod:`nephi.io.points`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import Grid, spatial_affine
from nephi.io.itk_images import ITK_SUFFIXES, is_nifti, read_itk_image, write_itk_image


@dataclass
class Image:
    """An image: ``data`` float32 numpy array of shape ``grid.shape`` and its ``grid``."""

    data: np.ndarray
    grid: Grid
    path: str = ""
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self.grid.ndim


def _squeeze_trailing(shape: tuple) -> tuple:
    shape = list(shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


class _NibabelMessages(logging.Handler):
    """Collects what nibabel logs while a file is read (header fixes it made, problems it saw).

    nibabel writes such messages straight to stderr through its own handler; a failed load must
    print one line only, so they are held back and replayed after a successful load.
    """

    def __init__(self):
        super().__init__(level=logging.NOTSET)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self._logger = nib.imageglobals.logger
        self._saved = (self._logger.handlers[:], self._logger.propagate)
        self._logger.handlers = [self]
        self._logger.propagate = False
        return self

    def __exit__(self, *exc):
        self._logger.handlers, self._logger.propagate = self._saved
        return False

    def replay(self):
        for record in self.records:
            self._logger.handle(record)


def check_input_file(path: str, what: str, kind: str) -> str:
    """The label ``"<what> <path>"`` of an input file that exists and is not a folder."""
    label = f"{what} {path}"
    if not path:
        raise NephiInputError(f"{what}: empty file name")
    if not os.path.exists(path):
        raise NephiInputError(f"{label}: file not found")
    if os.path.isdir(path):
        raise NephiInputError(f"{label}: is a folder, expected {kind}")
    return label


def load_image(path: str, what: str = "image", allow_nonfinite: bool = False) -> Image:
    """Load a 2-D or 3-D image; raise NephiInputError naming ``path`` on any problem.

    NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; NRRD, MetaImage and DICOM series (a
    folder, or a file of the series) with SimpleITK (:mod:`nephi.io.itk_images`). Anything that
    goes wrong while parsing or reading the file (missing, not an image, corrupt header,
    truncated or corrupt data, unsupported voxel type) becomes one NephiInputError whose message
    names the file and the problem.
    """
    label = f"{what} {path}"
    if path and os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            raise NephiInputError(f"{label}: permission denied")
        return _itk_image(path, label, allow_nonfinite)
    label = check_input_file(path, what, "an image file")
    if not os.access(path, os.R_OK):
        raise NephiInputError(f"{label}: permission denied")
    if os.path.getsize(path) == 0:
        raise NephiInputError(f"{label}: file is empty")
    if not is_nifti(path):
        return _itk_image(path, label, allow_nonfinite)
    with _NibabelMessages() as messages:
        try:
            img = nib.load(path)
        except MemoryError:
            raise NephiInputError(f"{label}: not enough memory to read it") from None
        except Exception as exc:  # nibabel raises many types for files it cannot parse
            raise NephiInputError(f"{label}: not a readable NIfTI file ({short_reason(exc)})") from None
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise NephiInputError(f"{label}: not a NIfTI image ({type(img).__name__})")
        shape = _checked_shape(img.shape, label)
        _check_voxel_type(img.get_data_dtype(), label)
        try:
            data = np.asanyarray(img.dataobj)
            source_dtype = data.dtype
            data = np.asarray(data, dtype=np.float32).reshape(shape)
        except MemoryError:
            raise NephiInputError(f"{label}: not enough memory to read shape "
                                  f"{tuple(img.shape)}") from None
        except Exception as exc:
            raise NephiInputError(f"{label}: data cannot be read, file truncated or corrupt "
                                  f"({short_reason(exc)})") from None
        try:
            affine = img.affine
        except Exception as exc:
            raise NephiInputError(f"{label}: header affine cannot be read ({short_reason(exc)})") from None
    messages.replay()
    return _checked_image(data, affine, label, path, source_dtype, allow_nonfinite)


def _itk_image(path: str, label: str, allow_nonfinite: bool) -> Image:
    data, affine = read_itk_image(path, label)
    shape = _checked_shape(data.shape, label)
    _check_voxel_type(data.dtype, label)
    return _checked_image(np.asarray(data, dtype=np.float32).reshape(shape), affine, label, path,
                          data.dtype, allow_nonfinite)


def _checked_shape(shape: tuple, label: str) -> tuple:
    """The spatial shape (trailing singleton axes dropped) of a 2-D or 3-D image."""
    spatial = _squeeze_trailing(shape)
    if len(spatial) not in (2, 3):
        raise NephiInputError(f"{label}: has shape {tuple(shape)}; nephi registers 2-D or 3-D "
                              f"images, not {len(spatial)}-D")
    if min(spatial) < 2:
        raise NephiInputError(f"{label}: has shape {tuple(shape)}; each axis needs >= 2 voxels")
    return spatial


def _check_voxel_type(dtype, label: str) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise NephiInputError(f"{label}: voxel type {dtype} is not supported (need integer or "
                              "real scalar voxels)")


def _checked_image(data: np.ndarray, affine, label: str, path: str, source_dtype,
                   allow_nonfinite: bool) -> Image:
    """The checks every image passes, from a file or from memory: finite voxels and affine,
    a valid grid."""
    if not allow_nonfinite:
        bad = ~np.isfinite(data)
        if bad.any():
            raise NephiInputError(f"{label}: contains {int(bad.sum())} NaN or infinite voxels")
    if affine is None or not np.all(np.isfinite(affine)):
        raise NephiInputError(f"{label}: header affine is missing or not finite")
    try:
        grid = Grid(data.shape, spatial_affine(affine, data.ndim))
    except ValueError as exc:
        raise NephiInputError(f"{label}: invalid geometry ({exc})") from None
    return Image(data=data, grid=grid, path=path, dtype=np.dtype(source_dtype))


def as_image(value, what: str = "image") -> Image:
    """An :class:`Image` from a path (:func:`load_image`), a nibabel image, an ``(array,
    affine)`` pair (affine: 4x4 NIfTI voxel -> RAS mm) or an Image; same checks as files."""
    if isinstance(value, Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_image(os.fspath(value), what=what)
    if isinstance(value, nib.spatialimages.SpatialImage):
        data, affine = np.asanyarray(value.dataobj), value.affine
        path = value.get_filename() or ""
    elif isinstance(value, tuple) and len(value) == 2:
        data, affine = np.asarray(value[0]), np.asarray(value[1], dtype=np.float64)
        path = ""
    else:
        raise NephiInputError(f"{what}: expected a path, a nibabel image or (array, affine), "
                              f"got {type(value).__name__}")
    shape = _checked_shape(data.shape, what)
    _check_voxel_type(data.dtype, what)
    return _checked_image(np.asarray(data, dtype=np.float32).reshape(shape), affine, what, path,
                          data.dtype, allow_nonfinite=False)


def load_mask(path: str, grid: Grid, what: str = "mask") -> np.ndarray:
    """Load a binary mask that must lie on ``grid``; returns a bool array of ``grid.shape``."""
    mask = load_image(path, what=what)
    label = f"{what} {path}"
    if mask.grid.shape != grid.shape:
        raise NephiInputError(f"{label}: shape {mask.grid.shape} differs from the fixed image's "
                              f"{grid.shape}")
    if not np.allclose(mask.grid.affine, grid.affine, atol=1e-3):
        raise NephiInputError(f"{label}: its affine differs from the fixed image's")
    out = mask.data > 0.5
    if not out.any():
        raise NephiInputError(f"{label}: no voxel is set")
    return out


def save_image(path: str, data: np.ndarray, grid: Grid, dtype=np.float32, intent=None) -> None:
    """Write ``data`` (grid.shape + optional trailing axes) with the grid's geometry: NIfTI, or
    NRRD / MetaImage by the suffix of ``path`` (scalar images)."""
    arr = np.asarray(data).astype(dtype, copy=False)
    if path.lower().endswith(ITK_SUFFIXES):
        write_itk_image(path, arr, grid)
        return
    img = nib.Nifti1Image(arr, grid.nifti_affine)
    img.header.set_qform(grid.nifti_affine, code=1)
    img.header.set_sform(grid.nifti_affine, code=1)
    if intent is not None:
        img.header.set_intent(intent)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


__all__ = ["Image", "load_image", "load_mask", "save_image", "grid_of", "as_image",
           "check_input_file"]


def grid_of(path: str, what: str = "reference image") -> Grid:
    """The grid of a NIfTI image (its data are not needed)."""
    return load_image(path, what=what, allow_nonfinite=True).grid
