"""ITK / ANTs transform files (affines, displacement fields, composites), through SimpleITK.

An ITK affine maps a point p of the fixed image's space to M (p - c) + c + t in LPS mm (the
pull-back direction, as nephi's :class:`~nephi.transforms.affine.Affine`); ANTs writes its
affines (``*GenericAffine.mat``) in this form. Files: ``.mat`` (ITK's MATLAB v4 layout, as ANTs
writes), ``.txt`` / ``.tfm`` (Insight Transform File) and ``.h5``; read from any of them:
every linear ITK transform (affine, Euler, similarity, versor, scale, translation), also in a
composite. :func:`read_transform` also reads displacement fields (NIfTI, ``.h5``) and
composites holding one, as a :class:`~nephi.transforms.displacement.Field`. A composite
(:func:`write_composite`) holds a displacement field and an affine in the order ITK applies them
to a point: the displacement first, then the affine.
"""

from __future__ import annotations

import os

import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import Grid, lps_to_ras, ras_lps_flip, ras_to_lps
from nephi.io.fields import read_field
from nephi.io.itk_images import from_sitk, is_nifti, to_sitk
from nephi.transforms.affine import Affine
from nephi.transforms.displacement import Field


__all__ = ["write_affine", "read_transform", "write_composite"]


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


def _affine_of(transform, label: str) -> Affine:
    """The :class:`Affine` (RAS) of a linear SimpleITK transform (LPS)."""
    d = transform.GetDimension()
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


def _field_of(transform, path: str, label: str) -> Field:
    """A non-linear SimpleITK transform as a :class:`Field`: tabulated on the grid of the
    displacement field it applies first to a point (its own grid for a
    ``DisplacementFieldTransform``, exact there; for a composite such as nephi's
    ``composite.h5`` or ANTs' ``*Composite.h5``, exact at those voxels)."""
    import SimpleITK as sitk

    parts = [transform]
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        # ITK applies the transform added last first
        parts = [composite.GetNthTransform(k)
                 for k in reversed(range(composite.GetNumberOfTransforms()))]
    fields = [t for t in parts if t.GetName() == "DisplacementFieldTransform"]
    if not fields:
        names = ", ".join(t.GetName() for t in parts)
        raise NephiInputError(f"{label}: a {names} is neither affine nor a displacement field")
    grid = sitk.DisplacementFieldTransform(fields[0]).GetDisplacementField()
    table = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(),
                                              grid.GetOrigin(), grid.GetSpacing(),
                                              grid.GetDirection())
    disp_lps, affine = from_sitk(table)
    return Field(lps_to_ras(disp_lps), Grid(disp_lps.shape[:-1], affine), path)


def read_transform(path: str, ndim: int, what: str = "--initial-transform") -> Affine | Field:
    """Read a transform that maps fixed points to moving points -> :class:`Affine` (a linear
    ITK transform, also a composite of linear ones) or :class:`Field` (RAS mm): an ITK
    displacement-field NIfTI (:func:`nephi.io.fields.read_field`), an ITK ``.h5`` holding a
    ``DisplacementFieldTransform``, or a composite of one with linear transforms. Every problem
    is a one-line :class:`NephiInputError` naming ``what`` and the file."""
    import SimpleITK as sitk

    label = f"{what} {path}"
    if not os.path.isfile(path):
        raise NephiInputError(f"{label}: file not found")
    if is_nifti(path):
        try:
            field = read_field(path)
        except NephiInputError as exc:
            raise NephiInputError(f"{what} {exc}") from None
        if field.grid.ndim != ndim:
            raise NephiInputError(f"{label}: a {field.grid.ndim}-D displacement field for "
                                  f"{ndim}-D images")
        return field
    try:
        transform = sitk.ReadTransform(path)
    except RuntimeError as exc:
        raise NephiInputError(f"{label}: not a readable ITK transform file "
                              f"({short_reason(exc)})") from None
    d = transform.GetDimension()
    if d != ndim:
        raise NephiInputError(f"{label}: a {d}-D transform for {ndim}-D images")
    if transform.IsLinear():
        return _affine_of(transform, label)
    return _field_of(transform, path, label)
