"""The files of a result folder (``nephi-infer --out``, :meth:`nephi.results.Result.save`).

Directions as everywhere in nephi (A = moving, B = fixed): ``warp.nii.gz`` lives on the fixed
grid and maps a fixed point p (LPS mm) to the moving point p + d(p); ``inverse_warp.nii.gz``
lives on the moving grid and maps moving points to fixed points. Both include the global
alignment; with one, ``affine.mat`` holds it alone (ITK, LPS) and ``composite.h5`` the same
whole transform as an ITK CompositeTransform (a deformable field on the fixed grid, then the
affine), for tools that keep the parts apart; ``inverse_composite.h5`` is a field on the moving
grid, then the inverse affine.
"""

__all__ = ["FORWARD", "INVERSE", "FORWARD_H5", "INVERSE_H5", "JACOBIAN", "LOG_JACOBIAN", "WARPED",
           "SUMMARY", "LANDMARKS_MOVING", "QC_FILE", "AFFINE", "INVERSE_AFFINE", "COMPOSITE",
           "INVERSE_COMPOSITE", "IMAGE_SUFFIXES", "image_file"]

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
