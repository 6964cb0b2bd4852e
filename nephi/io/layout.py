"""The files of a result folder (``nephi-infer --out``, :meth:`nephi.results.Result.save`).

Directions as everywhere in nephi (A = moving, B = fixed): ``warp.nii.gz`` lives on the fixed
grid and maps a fixed point p (LPS mm) to the moving point p + d(p); ``inverse_warp.nii.gz``
lives on the moving grid and maps moving points to fixed points. Both include the global
alignment; with one, ``affine.mat`` holds it alone (ITK, LPS), ``deformable_warp.nii.gz`` the
deformable part alone (an ITK displacement field f on the fixed grid: the whole map is
p -> affine(p + f(p))) and ``composite.h5`` the two as one ITK CompositeTransform, for tools
that keep the parts apart (ANTs: ``-t deformable_warp.nii.gz -t affine.mat``, the order of its
own ``*Warp.nii.gz`` and ``*GenericAffine.mat``). ``inverse_deformable_warp.nii.gz`` (a field on
the moving grid) and ``inverse_composite.h5`` are the same for the inverse map, with
``inverse_affine.mat``.
"""

__all__ = ["FORWARD", "INVERSE", "FORWARD_H5", "INVERSE_H5", "JACOBIAN", "LOG_JACOBIAN", "WARPED",
           "SUMMARY", "LANDMARKS_MOVING", "QC_FILE", "AFFINE", "INVERSE_AFFINE", "DEFORMABLE",
           "INVERSE_DEFORMABLE", "COMPOSITE", "INVERSE_COMPOSITE", "IMAGE_SUFFIXES", "image_file"]

FORWARD = "warp.nii.gz"
INVERSE = "inverse_warp.nii.gz"
FORWARD_H5 = "transform.h5"
INVERSE_H5 = "inverse_transform.h5"
JACOBIAN = "jacobian.nii.gz"
LOG_JACOBIAN = "log_jacobian.nii.gz"
WARPED = "warped.nii.gz"
SUMMARY = "summary.json"
LANDMARKS_MOVING = "landmarks_moving.csv"
QC_FILE = "qc_overview.png"
AFFINE = "affine.mat"
INVERSE_AFFINE = "inverse_affine.mat"
DEFORMABLE = "deformable_warp.nii.gz"
INVERSE_DEFORMABLE = "inverse_deformable_warp.nii.gz"
COMPOSITE = "composite.h5"
INVERSE_COMPOSITE = "inverse_composite.h5"

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
"""The formats of the folder's images (warped, Jacobian): that of the fixed input by default
(``nephi-infer --output-format``). Displacement fields are always NIfTI and HDF5."""


def image_file(name: str, suffix: str) -> str:
    """An image file name of the folder (``WARPED``, ``JACOBIAN``, ...) with another suffix."""
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"image suffix {suffix!r} is not one of {IMAGE_SUFFIXES}")
    return name[: -len(".nii.gz")] + suffix
