"""The files of a result folder (``nephi-infer --out``, :meth:`nephi.results.Result.save`).

Directions as everywhere in nephi (A = moving, B = fixed): ``warp.nii.gz`` lives on the fixed
grid and maps a fixed point p (LPS mm) to the moving point p + d(p); ``inverse_warp.nii.gz``
lives on the moving grid and maps moving points to fixed points.
"""

__all__ = ["FORWARD", "INVERSE", "FORWARD_H5", "INVERSE_H5", "JACOBIAN", "WARPED", "SUMMARY",
           "LANDMARKS_MOVING", "QC_FILE"]

FORWARD = "warp.nii.gz"
INVERSE = "inverse_warp.nii.gz"
FORWARD_H5 = "transform.h5"
INVERSE_H5 = "inverse_transform.h5"
JACOBIAN = "jacobian.nii.gz"
WARPED = "warped.nii.gz"
SUMMARY = "summary.json"
LANDMARKS_MOVING = "landmarks_moving.csv"
QC_FILE = "qc_overview.png"
