"""ITK / ANTs affine transform files and composite transforms, through SimpleITK.

An ITK affine maps a point p of the fixed image's space to M (p - c) + c + t in LPS mm (the
pull-back direction, as nephi's :class:`~nephi.transforms.affine.Affine`); ANTs writes its
affines (``*GenericAffine.mat``) in this form. Files: ``.mat`` (ITK's MATLAB v4 layout, as ANTs
writes), ``.txt`` / ``.tfm`` (Insight Transform File) and ``.h5``; read from any of them:
every linear ITK transform (affine, Euler, similarity, versor, scale, translation), also as the
single entry of a composite. A composite (:func:`write_composite`) holds a displacement field
and an affine in the order ITK applies them to a point: the displacement first, then the affine.
"""

from __future__ import annotations

import os

import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import ras_lps_flip, ras_to_lps
from nephi.io.itk_images import to_sitk
from nephi.transforms.affine import Affine
from nephi.transforms.displacement import Field


__all__ = ["write_affine", "read_affine", "write_composite"]


def _sitk_affine(affine: Affine):
    import SimpleITK as sitk

    d = affine.ndim
    flip = ras_lps_flip(d)
    lin = flip @ affine.matrix[:d, :d] @ flip
    t = flip @ affine.matrix[:d, d]
    out = sitk.AffineTransform(d)
    out.SetMatrix([float(v) for v in lin.reshape(-1)])
    out.SetTranslation([float(v) for v in t])
    return out


def write_affine(path: str, affine: Affine) -> None:
    """Write ``affine`` (RAS, fixed -> moving) as an ITK affine file (LPS, centre 0)."""
    import SimpleITK as sitk

    sitk.WriteTransform(_sitk_affine(affine), path)


def write_composite(path: str, affine: Affine, field: Field) -> None:
    """An ITK CompositeTransform file of the displacement ``field`` (applied first) and then
    ``affine``: a point p goes to affine(p + d(p))."""
    import SimpleITK as sitk

    image = to_sitk(ras_to_lps(field.disp), field.grid, vector=True)
    # ITK applies the transform added last first
    composite = sitk.CompositeTransform([_sitk_affine(affine),
                                         sitk.DisplacementFieldTransform(image)])
    sitk.WriteTransform(composite, path)


def read_affine(path: str, ndim: int, what: str = "--initial-transform") -> Affine:
    """Read a linear ITK transform file -> :class:`Affine` (RAS, fixed -> moving)."""
    import SimpleITK as sitk

    label = f"{what} {path}"
    if not os.path.isfile(path):
        raise NephiInputError(f"{label}: file not found")
    try:
        transform = sitk.ReadTransform(path)
    except RuntimeError as exc:
        raise NephiInputError(f"{label}: not a readable ITK transform file "
                              f"({short_reason(exc)})") from None
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() != 1:
            raise NephiInputError(f"{label}: a composite of {composite.GetNumberOfTransforms()} "
                                  "transforms; give one linear transform")
        transform = composite.GetNthTransform(0)
    d = transform.GetDimension()
    if d != ndim:
        raise NephiInputError(f"{label}: a {d}-D transform for {ndim}-D images")
    if not transform.IsLinear():
        raise NephiInputError(f"{label}: a {transform.GetName()} is not affine; give a linear "
                              "(affine, rigid, similarity or translation) transform")
    # an affine is determined by the images of the origin and the unit vectors
    origin = np.asarray(transform.TransformPoint([0.0] * d))
    columns = [np.asarray(transform.TransformPoint(list(np.eye(d)[k]))) - origin
               for k in range(d)]
    flip = ras_lps_flip(d)
    matrix = np.eye(d + 1)
    matrix[:d, :d] = flip @ np.stack(columns, axis=1) @ flip
    matrix[:d, d] = flip @ origin
    try:
        return Affine(matrix)
    except ValueError as exc:
        raise NephiInputError(f"{label}: {exc}") from None
