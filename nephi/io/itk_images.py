"""Images in the formats ITK reads and writes (NRRD, MetaImage, DICOM series), through SimpleITK.

Converted once, here, into the geometry nephi uses everywhere else: an array in voxel order
(x, y[, z]) (the first array axis is ITK's first index) and a 4x4 NIfTI-style affine from voxel
index to RAS millimetres (:func:`nephi.geometry.grid.affine_from_lps` and
:meth:`~nephi.geometry.grid.Grid.lps_geometry` convert ITK's LPS origin, spacing and
direction).

DICOM: a folder holding one series, or any file of a series (the whole series is read). A folder
holding several series is an input error that lists them and asks for one file of the series
wanted.
"""

from __future__ import annotations

import os

import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import Grid, affine_from_lps, nifti_affine


__all__ = ["ITK_SUFFIXES", "NIFTI_SUFFIXES", "is_nifti", "read_itk_image", "write_itk_image",
           "from_sitk", "to_sitk", "output_suffix"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def output_suffix(image_path: str, output_format: str | None = None) -> str:
    """The suffix of output images: ``.<output_format>`` when given, else the input image's own
    for NIfTI, NRRD and MetaImage (``.nhdr`` -> ``.nrrd``, ``.mhd`` -> ``.mha``: single
    files), ``.nii.gz`` otherwise (DICOM, images from memory)."""
    if output_format:
        return f".{output_format}"
    lower = (image_path or "").lower()
    for suffix, out in ((".nii.gz", ".nii.gz"), (".nii", ".nii"), (".nrrd", ".nrrd"),
                        (".nhdr", ".nrrd"), (".mha", ".mha"), (".mhd", ".mha")):
        if lower.endswith(suffix):
            return out
    return ".nii.gz"


def from_sitk(img) -> tuple:
    """A SimpleITK image -> (array in voxel order (x, y[, z])[, components], its (d+1, d+1)
    voxel -> RAS affine)."""
    import SimpleITK as sitk

    d = img.GetDimension()
    array = sitk.GetArrayFromImage(img)  # (z, y, x[, c]): reverse the spatial axes
    axes = tuple(range(d - 1, -1, -1)) + tuple(range(d, array.ndim))
    affine = affine_from_lps(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    return np.ascontiguousarray(array.transpose(axes)), affine


def to_sitk(data: np.ndarray, grid: Grid, vector: bool = False):
    """``data`` (grid.shape[, components], voxel order) on ``grid`` as a SimpleITK image."""
    import SimpleITK as sitk

    d = grid.ndim
    data = np.asarray(data)
    axes = tuple(range(d - 1, -1, -1)) + tuple(range(d, data.ndim))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(axes)), isVector=vector)
    origin, spacing, direction = grid.lps_geometry()
    img.SetOrigin([float(v) for v in origin])
    img.SetSpacing([float(v) for v in spacing])
    img.SetDirection([float(v) for v in direction.reshape(-1)])
    return img


def _dicom_files(path: str, label: str) -> list:
    """The files of the one DICOM series at ``path`` (a folder or a file of the series)."""
    import SimpleITK as sitk

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        if os.path.isdir(path):
            raise NephiInputError(f"{label}: is a folder without a DICOM series (expected an "
                                  "image file, or a folder holding one DICOM series)")
        raise NephiInputError(f"{label}: no DICOM series found beside this file")
    if os.path.isdir(path):
        if len(series) > 1:
            raise NephiInputError(f"{label}: the folder holds {len(series)} DICOM series "
                                  f"({', '.join(series)}); give one file of the series wanted")
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    uid = reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else ""
    if uid not in series:
        return [path]
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))


def _looks_like_dicom(path: str) -> bool:
    if os.path.isdir(path) or path.lower().endswith((".dcm", ".ima")):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_itk_image(path: str, label: str) -> tuple:
    """Read an NRRD / MetaImage file or a DICOM series -> (data in voxel order (x, y[, z]) with
    the file's voxel type, 4x4 voxel -> RAS affine). Problems are NephiInputErrors naming
    ``label``."""
    import SimpleITK as sitk

    try:
        if _looks_like_dicom(path):
            files = _dicom_files(path, label)
            img = sitk.ReadImage(files) if len(files) > 1 else sitk.ReadImage(files[0])
        else:
            img = sitk.ReadImage(path)
    except NephiInputError:
        raise
    except MemoryError:
        raise NephiInputError(f"{label}: not enough memory to read it") from None
    except RuntimeError as exc:  # SimpleITK reports every reader failure as RuntimeError
        raise NephiInputError(f"{label}: not a readable image ({short_reason(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NephiInputError(f"{label}: has {img.GetNumberOfComponentsPerPixel()} components "
                              "per voxel; nephi registers scalar images")
    d = img.GetDimension()
    if d not in (2, 3):
        raise NephiInputError(f"{label}: is {d}-D; nephi registers 2-D or 3-D images")
    data, affine = from_sitk(img)
    return data, nifti_affine(affine)


def write_itk_image(path: str, data: np.ndarray, grid: Grid) -> None:
    """Write ``data`` (grid.shape, its own voxel type) on ``grid`` as an NRRD or MetaImage file
    (by the suffix of ``path``), geometry converted to LPS."""
    import SimpleITK as sitk

    sitk.WriteImage(to_sitk(data, grid), path, useCompression=True)
