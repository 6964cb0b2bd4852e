"""Mapping point sets with a result folder's fields (``nephi-points``).

Point sets go the opposite way to images (A = moving, B = fixed):

* ``fixed-to-moving``: a fixed point p goes to p + d(p) with d from ``warp.nii.gz`` (fixed
  grid). This is how ``landmarks_moving.csv`` is made.
* ``moving-to-fixed``: a moving point q goes to q + d'(q) with d' from ``inverse_warp.nii.gz``
  (moving grid).

d is interpolated linearly and is zero outside its grid, as ITK's DisplacementFieldTransform
does (:class:`nephi.transforms.displacement.Field`). CSV files have a header ``x,y,z`` (2-D ``x,y``); the
coordinates are RAS millimetres (nibabel, nephi) or, with ``lps=True``, LPS millimetres (ITK,
ANTs, 3D Slicer's markups): x and y change sign.
"""

from __future__ import annotations

from nephi.errors import NephiInputError
from nephi.geometry.grid import lps_to_ras, ras_to_lps
from nephi.io.atomic import check_output_path, write_file
from nephi.io.images import load_points, save_points
from nephi.results.result import DIRECTIONS, Result
from nephi.transforms.displacement import outside_grid


__all__ = ["map_points_file"]


def map_points_file(result: Result, in_path: str, out_path: str,
                    direction: str = "fixed-to-moving", lps: bool = False) -> dict:
    """Read a CSV point set, map it (see :meth:`Result.map_points`), write a CSV.

    ``lps``: input and output coordinates are LPS mm (else RAS mm). Returns a dict with the
    ``count`` of points and how many lie ``outside`` the field's grid (they keep zero
    displacement).
    """
    if direction not in DIRECTIONS:
        raise NephiInputError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    check_output_path(out_path)
    field = result.field(inverse=direction == "moving-to-fixed")
    d = field.grid.ndim
    points = load_points(in_path, d, what="--points")
    ras = lps_to_ras(points) if lps else points
    mapped = field(ras)
    write_file(out_path, lambda tmp: save_points(tmp, ras_to_lps(mapped) if lps else mapped))
    return {"count": len(points), "outside": int(outside_grid(ras, field.grid).sum()),
            "field": field.path}
