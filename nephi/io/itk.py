"""ITK HDF5 transform files (``.h5``) holding a displacement field, written and read with h5py.

The layout is the one ITK's ``HDF5TransformIO`` writes (checked field by field against a file
written by SimpleITK 2.5 / ITK 5.4 ``sitk.WriteTransform``)::

    /ITKVersion                              string
    /HDFVersion                              string, "HDF5 library version: 1.x.y"
    /OSName                                  string
    /OSVersion                               string
    /TransformGroup/                         group
    /TransformGroup/0/                       group
    /TransformGroup/0/TransformType          string, "DisplacementFieldTransform_double_3_3"
                                             (2-D: "..._double_2_2")
    /TransformGroup/0/TransformFixedParameters  float64 (d + d + d + d*d,):
                                             size, origin (LPS mm), spacing (mm),
                                             direction (LPS, d x d, row-major: row r holds the
                                             r-th LPS component of every axis direction)
    /TransformGroup/0/TransformParameters    float64 (prod(size) * d,): the displacement vectors
                                             in LPS mm, x (first axis) fastest, vector
                                             components innermost

Every string is a one-element dataset (shape (1,)) of variable-length, ASCII, null-terminated
strings (HDF5 ``C_S1`` with ``H5T_VARIABLE``); no attributes, no chunking, no compression; the
file uses the HDF5 1.8 format (ITK sets libver bounds v18..v18).

Direction of the field (as in ``nephi.io.fields``): a point p (LPS) on the field's grid corresponds
to p + d(p); for ``transform.h5`` that is fixed -> moving, which is what ITK/ANTs need to pull the
moving image onto the fixed grid.
"""

from __future__ import annotations

import platform

import h5py
import numpy as np

from nephi.geometry.grid import Grid, ras_to_lps


# The ITK version whose HDF5 transform layout this module writes (ITK's readers ignore it).
ITK_LAYOUT_VERSION = "5.4.0"


_STR = h5py.string_dtype(encoding="ascii")


def _write_string(h5: h5py.File, name: str, value: str) -> None:
    h5.create_dataset(name, shape=(1,), dtype=_STR,
                      data=np.array([value.encode("ascii", "replace")], dtype=object))


def _read_string(h5: h5py.File, name: str) -> str:
    value = h5[name][()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def itk_fixed_parameters(grid: Grid) -> np.ndarray:
    """ITK DisplacementFieldTransform fixed parameters of ``grid``: size, origin, spacing,
    direction (row-major), all in LPS."""
    origin, spacing, direction = grid.lps_geometry()
    return np.concatenate([np.asarray(grid.shape, dtype=np.float64), origin, spacing,
                           direction.reshape(-1)]).astype(np.float64)


def grid_from_fixed_parameters(fixed: np.ndarray, d: int) -> Grid:
    """Inverse of :func:`itk_fixed_parameters`."""
    fixed = np.asarray(fixed, dtype=np.float64)
    if fixed.size != 3 * d + d * d:
        raise ValueError(f"fixed parameters of a {d}-D displacement field hold {3 * d + d * d} "
                         f"values, got {fixed.size}")
    size = tuple(int(round(v)) for v in fixed[:d])
    return Grid.from_lps(size, fixed[d:2 * d], fixed[2 * d:3 * d], fixed[3 * d:])


def write_displacement_h5(path: str, disp_ras: np.ndarray, grid: Grid) -> None:
    """Write a displacement field (*S, d) in RAS mm on ``grid`` as an ITK HDF5 transform file
    holding one ``DisplacementFieldTransform_double_d_d``."""
    disp_ras = np.asarray(disp_ras, dtype=np.float64)
    d = grid.ndim
    if disp_ras.shape != (*grid.shape, d):
        raise ValueError(f"displacement shape {disp_ras.shape} does not match the grid "
                         f"{(*grid.shape, d)}")
    disp_lps = ras_to_lps(disp_ras)
    # x fastest: reverse the spatial axes, keep the vector axis last, then C-order ravel.
    params = np.ascontiguousarray(
        disp_lps.transpose(*reversed(range(d)), d)).reshape(-1).astype(np.float64)
    try:
        h5 = h5py.File(path, "w", libver=("v108", "v108"))
    except ValueError:  # an HDF5 library too old for explicit bounds
        h5 = h5py.File(path, "w")
    with h5:
        _write_string(h5, "ITKVersion", ITK_LAYOUT_VERSION)
        _write_string(h5, "HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}")
        _write_string(h5, "OSName", platform.system() or "unknown")
        _write_string(h5, "OSVersion", platform.release() or "unknown")
        group = h5.create_group("TransformGroup").create_group("0")
        _write_string(group, "TransformType", f"DisplacementFieldTransform_double_{d}_{d}")
        group.create_dataset("TransformFixedParameters", data=itk_fixed_parameters(grid),
                             dtype=np.float64)
        group.create_dataset("TransformParameters", data=params, dtype=np.float64)


def read_displacement_h5(path: str) -> tuple:
    """Read an ITK HDF5 transform file holding one displacement field ->
    (displacement (*S, d) in RAS mm, Grid).

    Accepts the field as ``/TransformGroup/0`` or, as ANTs writes it, as the only transform
    after a ``CompositeTransform`` entry.
    """
    with h5py.File(path, "r") as h5:
        if "TransformGroup" not in h5:
            raise ValueError(f"{path}: not an ITK transform file (no /TransformGroup)")
        names = sorted(h5["TransformGroup"].keys(), key=int)
        entries = [(n, _read_string(h5, f"TransformGroup/{n}/TransformType")) for n in names]
        fields = [(n, t) for n, t in entries if t.startswith("DisplacementFieldTransform")]
        others = [t for n, t in entries if not t.startswith(("DisplacementFieldTransform",
                                                             "CompositeTransform"))]
        if len(fields) != 1 or others:
            raise ValueError(f"{path}: expected exactly one DisplacementFieldTransform, found "
                             f"{[t for _, t in entries]}")
        name, ttype = fields[0]
        d = int(ttype.rsplit("_", 1)[-1])
        g = h5[f"TransformGroup/{name}"]
        fixed_name = ("TransformFixedParameters" if "TransformFixedParameters" in g
                      else "TranformFixedParameters")  # ITK also reads its old misspelling
        params_name = ("TransformParameters" if "TransformParameters" in g
                       else "TranformParameters")
        fixed = np.asarray(g[fixed_name][()], dtype=np.float64)
        params = np.asarray(g[params_name][()], dtype=np.float64)
    grid = grid_from_fixed_parameters(fixed, d)
    if params.size != grid.num_voxels * d:
        raise ValueError(f"{path}: {params.size} parameters, expected {grid.num_voxels * d}")
    disp_lps = params.reshape(*reversed(grid.shape), d).transpose(*reversed(range(d)), d)
    return ras_to_lps(disp_lps), grid
