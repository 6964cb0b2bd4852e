"""Mapping point sets with a result folder's fields (``nephi-points``).

Point sets go the opposite way to images (A = moving, B = fixed):

* ``fixed-to-moving``: a fixed point p goes to p + d(p) with d from ``warp.nii.gz`` (fixed
  grid). This is how ``landmarks_moving.csv`` is made.
* ``moving-to-fixed``: a moving point q goes to q + d'(q) with d' from ``inverse_warp.nii.gz``
  (moving grid).

d is interpolated linearly and is zero outside its grid, as ITK's DisplacementFieldTransform
does (:class:`nephi.transforms.displacement.Field`). Point files are read and written by
:mod:`nephi.io.points`, the format chosen by the file name: 3D Slicer ``.fcsv`` and
``.mrk.json`` (they say their coordinate system; written in LPS), the ITK/ANTs point CSV
(header ``x,y,z,t,...``, LPS) and nephi's CSV (header ``x,y,z``, 2-D ``x,y``), whose coordinates
are RAS millimetres (nibabel, nephi) or, with ``lps=True``, LPS millimetres (ITK, ANTs): x and y
change sign. With ``lps=True`` a ``.csv`` output is written as the ANTs point CSV
(``x,y,z,t,label,comment``, t = 0) that antsApplyTransformsToPoints reads.
"""

from __future__ import annotations

from nephi.errors import NephiInputError
from nephi.geometry.grid import lps_to_ras, ras_to_lps
from nephi.io.atomic import check_output_path, write_file
from nephi.io.points import (NEPHI_CSV, SLICER_FORMATS, point_format, read_point_file,
                             save_ants_points, save_points)
from nephi.results.result import DIRECTIONS, Result
from nephi.transforms.displacement import outside_grid


__all__ = ["map_points_file"]


def map_points_file(result: Result, in_path: str, out_path: str,
                    direction: str = "fixed-to-moving", lps: bool = False) -> dict:
    """Read a point set, map it (see :meth:`Result.map_points`), write it.

    ``lps``: the coordinates of nephi-layout CSV files (header ``x,y,z`` without ``t``) are LPS
    mm (else RAS mm), and a ``.csv`` output is the ANTs point CSV (LPS, ``x,y,z,t,label,
    comment``); the other formats say their coordinate system themselves. Returns a dict with
    the ``count`` of points and how many lie ``outside`` the field's grid (they keep zero
    displacement).
    """
    if direction not in DIRECTIONS:
        raise NephiInputError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    check_output_path(out_path)
    field = result.field(inverse=direction == "moving-to-fixed")
    d = field.grid.ndim
    out_format = point_format(out_path)
    if out_format in SLICER_FORMATS and d != 3:
        raise NephiInputError(f"--out {out_path}: 3D Slicer point files hold 3-D points, this "
                              f"result is {d}-D (write a .csv)")
    points, in_format = read_point_file(in_path, d, what="--points")
    ras = lps_to_ras(points) if lps and in_format == NEPHI_CSV else points
    mapped = field(ras)

    def write(tmp: str) -> None:
        if out_format in SLICER_FORMATS:
            save_points(tmp, mapped)  # LPS, said in the file
        elif lps and out_path.lower().endswith(".csv"):
            save_ants_points(tmp, mapped)
        else:
            save_points(tmp, ras_to_lps(mapped) if lps else mapped)

    write_file(out_path, write)
    return {"count": len(points), "outside": int(outside_grid(ras, field.grid).sum()),
            "field": field.path}
