"""Applying a saved displacement field to any image, in physical space (``nephi-warp``).

A field (see :mod:`nephi.results.result`) lives on a grid G_f and maps a point p (RAS mm) of that grid to
p + d(p). Warping an image I onto an output grid G_o (G_f by default) gives, at every output
voxel centre x (RAS mm),

    out(x) = I(x + d(x)),   d linearly interpolated on G_f and zero outside G_f (as ITK),

with I sampled at the physical point x + d(x) through its own affine, so I may have any shape,
spacing and orientation. With ``warp.nii.gz`` this pulls a moving-space image onto the fixed grid
(what ``warped.nii.gz`` is); with ``inverse_warp.nii.gz`` it pulls a fixed-space image onto the
moving grid.

Interpolators (``interp``):

* ``linear``: multilinear, exactly as ``warped.nii.gz`` is made and as ITK's linear
  interpolator does it (edge values up to half a voxel beyond the outermost voxel centres).
* ``cubic``: cubic B-spline (the image is prefiltered once into spline coefficients with mirror
  boundaries, as ``scipy.ndimage.map_coordinates(order=3)`` does).
* ``nearest``: the value of the nearest voxel.
* ``label``: generic-label interpolation (ITK's ``LabelImageGenericInterpolateImageFunction``,
  ANTs' ``GenericLabel``): the one-hot indicator of every label is interpolated linearly and the
  label with the largest weight wins (ties: the smaller label value). Labels are processed in
  groups, so memory grows with the group size, not with the number of labels.

For every interpolator a point is outside the image (value 0) when its continuous voxel index
leaves [-0.5, N - 0.5] on some axis (ITK's buffer test). The output
keeps the input's voxel type: integer images are rounded and clipped to the type's range after
``linear`` or ``cubic`` interpolation; ``nearest`` and ``label`` only copy existing values.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.geometry.sampling import sample_image
from nephi.io.atomic import check_output_path, write_file
from nephi.io.images import Image, grid_of, load_image, save_image
from nephi.io.layout import IMAGE_SUFFIXES
from nephi.transforms.displacement import Field, map_points


INTERPOLATORS = ("linear", "cubic", "nearest", "label")


MAX_LABELS = 2000


LABEL_BUDGET_BYTES = 256 * 2 ** 20


DEFAULT_CHUNK = 1 << 18


def voxel_points(grid: Grid, start: int, stop: int) -> np.ndarray:
    """RAS mm (n, d) of the voxel centres with flat (C-order) indices start..stop-1 of ``grid``."""
    flat = np.arange(start, stop)
    index = np.stack(np.unravel_index(flat, grid.shape), axis=-1).astype(np.float64)
    return grid.index_to_ras_points(index)


def mapped_index(field: Field | None, out_grid: Grid, image_grid: Grid,
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Continuous voxel indices in ``image_grid`` of x + d(x) for every voxel x of ``out_grid``.

    Returns float32 (prod(out_grid.shape), d) in C order of ``out_grid``. ``field`` None means the
    identity (x itself). When ``out_grid`` is the field's own grid, d(x) is read at the voxel
    directly; otherwise it is interpolated linearly (zero outside the field's grid).
    """
    n, d = out_grid.num_voxels, out_grid.ndim
    out = np.empty((n, d), dtype=np.float32)
    on_field_grid = field is not None and out_grid.same_as(field.grid, tol=1e-6)
    flat_disp = field.disp.reshape(-1, d) if on_field_grid else None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = voxel_points(out_grid, start, stop)
        if field is None:
            p = x
        elif on_field_grid:
            p = x + flat_disp[start:stop]
        else:
            p = map_points(x, field.disp, field.grid)
        out[start:stop] = image_grid.ras_to_index_points(p)
    return out


def _inside(index: np.ndarray, shape: tuple) -> np.ndarray:
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    return np.all((index >= -0.5) & (index <= upper), axis=-1)


def _to_normalized(index: np.ndarray, shape: tuple) -> torch.Tensor:
    scale = torch.as_tensor(2.0 / (np.asarray(shape, dtype=np.float64) - 1.0), dtype=torch.float32)
    return torch.as_tensor(index, dtype=torch.float32) * scale - 1.0


def _linear(volume: torch.Tensor, index: np.ndarray, shape: tuple, padding: str) -> np.ndarray:
    """Sample (1, C, *S) at indices (n, d) -> (C, n) float32 numpy."""
    pts = _to_normalized(index, shape).unsqueeze(0)
    return sample_image(volume, pts, padding=padding)[0].numpy()


def sample_index(data: np.ndarray, index: np.ndarray, interp: str = "linear",
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Sample ``data`` (*S) at continuous voxel indices ``index`` (M, d) -> (M,).

    Result dtype: float32 for ``linear`` and ``cubic``, ``data.dtype`` for ``nearest`` and
    ``label``. Outside conventions: see the module docstring.
    """
    if interp not in INTERPOLATORS:
        raise NephiInputError(f"--interp {interp}: expected one of {', '.join(INTERPOLATORS)}")
    data = np.asarray(data)
    shape = data.shape
    m = index.shape[0]
    if interp == "nearest":
        out = np.zeros(m, dtype=data.dtype)
        for start in range(0, m, chunk):
            idx = index[start:start + chunk].astype(np.float64)
            ok = _inside(idx, shape)
            vox = np.clip(np.floor(idx[ok] + 0.5).astype(np.int64), 0,
                          np.asarray(shape) - 1)
            part = np.zeros(len(idx), dtype=data.dtype)
            part[ok] = data[tuple(vox.T)]
            out[start:start + chunk] = part
        return out
    if interp == "label":
        return _generic_label(data, index, chunk)
    out = np.empty(m, dtype=np.float32)
    if interp == "linear":
        volume = torch.as_tensor(np.asarray(data, dtype=np.float32)).reshape(1, 1, *shape)
        for start in range(0, m, chunk):
            out[start:start + chunk] = _linear(volume, index[start:start + chunk], shape,
                                               "itk")[0]
        return out
    from scipy import ndimage  # here, not at the top: 0.2 s of every command's start-up

    coeffs = ndimage.spline_filter(np.asarray(data, dtype=np.float64), order=3, mode="mirror")
    for start in range(0, m, chunk):
        idx = index[start:start + chunk].astype(np.float64)
        values = ndimage.map_coordinates(coeffs, idx.T, order=3, mode="mirror", prefilter=False)
        out[start:start + chunk] = np.where(_inside(idx, shape), values, 0.0)
    return out


def _generic_label(data: np.ndarray, index: np.ndarray, chunk: int) -> np.ndarray:
    """Generic-label interpolation of ``data`` (*S) at indices (M, d) -> (M,) of data's dtype."""
    shape = data.shape
    labels = np.unique(data)
    if len(labels) > MAX_LABELS:
        raise NephiInputError(f"--interp label: the image holds {len(labels)} distinct values, "
                              f"more than {MAX_LABELS}; is it a label map? Use --interp linear "
                              "or cubic for intensities")
    m = index.shape[0]
    best_weight = np.zeros(m, dtype=np.float32)
    best_label = np.zeros(m, dtype=data.dtype)
    group = int(max(1, min(64, LABEL_BUDGET_BYTES // (4 * data.size))))
    inside = np.empty(m, dtype=bool)
    for start in range(0, m, chunk):
        inside[start:start + chunk] = _inside(index[start:start + chunk].astype(np.float64), shape)
    for g0 in range(0, len(labels), group):
        members = labels[g0:g0 + group]
        onehot = np.stack([data == value for value in members]).astype(np.float32)
        volume = torch.as_tensor(onehot).reshape(1, len(members), *shape)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            weights = _linear(volume, index[start:stop], shape, "border")  # (K, n)
            k = weights.argmax(axis=0)
            w = weights[k, np.arange(stop - start)]
            better = (w > best_weight[start:stop]) & inside[start:stop]
            best_weight[start:stop][better] = w[better]
            best_label[start:stop][better] = members[k[better]]
    return best_label


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated intensities -> ``dtype`` (integers: rounded, clipped to the type's range)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def warp_image(image: Image, field: Field | None, out_grid: Grid | None = None,
               interp: str = "linear", chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """``image`` pulled back through ``field`` onto ``out_grid`` (default: the field's grid).

    Returns an array of ``out_grid.shape`` with the image's voxel type (``image.dtype``).
    ``field`` None resamples with the identity (physical space), e.g. to show a moving image on
    the fixed grid before registration.
    """
    if out_grid is None:
        if field is None:
            raise ValueError("warp_image: give a field or an output grid")
        out_grid = field.grid
    if field is not None and image.ndim != field.grid.ndim:
        raise NephiInputError(f"image {image.path}: is {image.ndim}-D but the warp "
                              f"{field.path} is {field.grid.ndim}-D")
    if image.ndim != out_grid.ndim:
        raise NephiInputError(f"image {image.path}: is {image.ndim}-D but the output grid is "
                              f"{out_grid.ndim}-D")
    dtype = np.dtype(image.dtype)
    data = image.data
    if interp in ("nearest", "label") and dtype.kind in "iu":
        data = np.asarray(image.data).astype(dtype)
    index = mapped_index(field, out_grid, image.grid, chunk)
    values = sample_index(data, index, interp, chunk)
    if interp in ("linear", "cubic"):
        values = cast_like(values, dtype)
    return values.reshape(out_grid.shape)


def warp_file(result, image_path: str, out_path: str, interp: str = "linear",
              reference: str | None = None, inverse: bool = False) -> dict:
    """``nephi-warp``: warp the image file ``image_path`` with a result folder's field and write
    ``out_path``.

    ``result``: a :class:`nephi.results.result.Result`. Forward (default): ``warp.nii.gz`` pulls a
    moving-space image onto the fixed grid. ``inverse``: ``inverse_warp.nii.gz`` pulls a
    fixed-space image onto the moving grid. ``reference``: a NIfTI whose grid the output takes
    instead (points of it outside the field's grid get zero displacement). Returns a dict
    describing what was done: output ``shape`` and ``dtype``, the ``field`` file used and which
    ``grid`` the output lies on (fixed, moving or reference).
    """
    if interp not in INTERPOLATORS:
        raise NephiInputError(f"--interp {interp}: expected one of {', '.join(INTERPOLATORS)}")
    check_output_path(out_path, suffixes=IMAGE_SUFFIXES)
    field = result.field(inverse=inverse)
    image = load_image(image_path, what="--image")
    if image.ndim != field.grid.ndim:
        raise NephiInputError(f"--image {image_path}: is {image.ndim}-D but the result's "
                              f"{os.path.basename(field.path)} is {field.grid.ndim}-D")
    out_grid = field.grid
    if reference:
        out_grid = grid_of(reference, what="--reference")
        if out_grid.ndim != field.grid.ndim:
            raise NephiInputError(f"--reference {reference}: is {out_grid.ndim}-D but the "
                                  f"result's {os.path.basename(field.path)} is "
                                  f"{field.grid.ndim}-D")
    warped = warp_image(image, field, out_grid, interp)
    write_file(out_path, lambda tmp: save_image(tmp, warped, out_grid, dtype=warped.dtype))
    return {"shape": tuple(out_grid.shape), "dtype": str(warped.dtype),
            "field": field.path, "grid": "reference" if reference else
            ("moving" if inverse else "fixed")}
