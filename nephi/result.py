"""Reading a result folder written by ``nephi-infer`` (see :mod:`nephi.register` for its files).

Every problem a user can cause (missing folder, missing or unreadable file, a field that is not
an ITK displacement field) is a :class:`~nephi.errors.NephiInputError` naming the file.

Directions (as everywhere in nephi; A = moving, B = fixed):

* ``warp.nii.gz`` lives on the fixed grid: a fixed point p (RAS mm here) goes to the moving point
  p + d(p). It pulls moving images onto the fixed grid and pushes fixed points into moving space.
* ``inverse_warp.nii.gz`` lives on the moving grid: a moving point q goes to the fixed point
  q + d'(q). It pulls fixed images onto the moving grid and pushes moving points into fixed space.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .errors import NephiInputError
from .export import read_displacement_field
from .geometry import Grid
from .imageio import Image, load_image

FORWARD = "warp.nii.gz"
INVERSE = "inverse_warp.nii.gz"
JACOBIAN = "jacobian.nii.gz"
WARPED = "warped.nii.gz"
SUMMARY = "summary.json"


@dataclass
class Field:
    """A displacement field: ``disp`` (*S, d) float64 RAS mm on ``grid``; ``path`` its file."""

    disp: np.ndarray
    grid: Grid
    path: str


class Result:
    """A nephi result folder. Files are read on first use and kept."""

    def __init__(self, path: str, what: str = "result folder"):
        if not path:
            raise NephiInputError(f"{what}: empty folder name")
        if not os.path.exists(path):
            raise NephiInputError(f"{what} {path}: not found")
        if not os.path.isdir(path):
            raise NephiInputError(f"{what} {path}: is not a folder")
        if not os.path.isfile(os.path.join(path, FORWARD)) and not os.path.isfile(
                os.path.join(path, SUMMARY)):
            raise NephiInputError(f"{what} {path}: holds neither {FORWARD} nor {SUMMARY}; is it "
                                  "a nephi-infer --out folder?")
        self.path = path
        self.what = what
        self._cache = {}

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    def file(self, name: str) -> str:
        """Path of ``name`` inside the folder; NephiInputError when it is missing."""
        full = os.path.join(self.path, name)
        if not os.path.isfile(full):
            raise NephiInputError(f"{self.what} {self.path}: {name} is missing (re-run "
                                  "nephi-infer, or copy the whole result folder)")
        return full

    def has(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path, name))

    @property
    def summary(self) -> dict:
        """summary.json as a dict ({} when the folder has none)."""
        if "summary" not in self._cache:
            if not self.has(SUMMARY):
                self._cache["summary"] = {}
            else:
                path = self.file(SUMMARY)
                try:
                    with open(path) as fh:
                        value = json.load(fh)
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise NephiInputError(f"{path}: not a readable summary ({exc})") from None
                if not isinstance(value, dict):
                    raise NephiInputError(f"{path}: not a summary (top level is not a mapping)")
                self._cache["summary"] = value
        return self._cache["summary"]

    def field(self, inverse: bool = False) -> Field:
        """The forward field (``warp.nii.gz``, fixed grid) or, with ``inverse``, the backward
        one (``inverse_warp.nii.gz``, moving grid)."""
        key = INVERSE if inverse else FORWARD
        if key not in self._cache:
            self._cache[key] = read_field(self.file(key))
        return self._cache[key]

    @property
    def fixed_grid(self) -> Grid:
        return self.field().grid

    @property
    def moving_grid(self) -> Grid:
        return self.field(inverse=True).grid

    def scalar(self, name: str) -> np.ndarray:
        """A scalar map of the folder (e.g. jacobian.nii.gz, warped.nii.gz) on the fixed grid,
        float32 (*S_fixed)."""
        if name not in self._cache:
            img = load_image(self.file(name), what=f"{self.what} {self.path}: {name}",
                             allow_nonfinite=True)
            if img.grid.shape != self.fixed_grid.shape:
                raise NephiInputError(f"{img.path}: shape {img.grid.shape} differs from the "
                                      f"warp's grid {self.fixed_grid.shape}")
            self._cache[name] = img.data
        return self._cache[name]

    def input_image(self, role: str, override: str | None = None) -> Image:
        """The fixed or moving image the registration read (``role`` 'fixed' or 'moving'):
        ``override`` if given, else the path recorded in summary.json."""
        path = override or self.summary.get(role)
        if not path:
            raise NephiInputError(f"{self.what} {self.path}: summary.json does not name the "
                                  f"{role} image; give it with --{role}")
        return load_image(path, what=f"{role} image (of {self.path})")

    def recorded_path(self, key: str) -> str | None:
        """A path recorded in summary.json under ``key`` (e.g. 'landmarks', 'mask'), or None."""
        value = self.summary.get(key)
        return value if isinstance(value, str) and value else None


def read_field(path: str) -> Field:
    """Read an ITK displacement-field NIfTI -> :class:`Field` (RAS mm); input errors name it."""
    try:
        img = nib.load(path)
        shape = img.shape
    except Exception as exc:
        raise NephiInputError(f"{path}: not a readable NIfTI file ({_short(exc)})") from None
    d = shape[-1] if len(shape) == 5 else 0
    expected = (len(shape) == 5 and d in (2, 3) and shape[3] == 1
                and (d == 3 or shape[2] == 1))
    if not expected:
        raise NephiInputError(f"{path}: shape {tuple(shape)} is not an ITK displacement field "
                              "(X, Y, Z, 1, 3) or (X, Y, 1, 1, 2)")
    try:
        disp, grid = read_displacement_field(path)
    except Exception as exc:
        raise NephiInputError(f"{path}: cannot be read as a displacement field "
                              f"({_short(exc)})") from None
    if not np.all(np.isfinite(disp)):
        raise NephiInputError(f"{path}: holds NaN or infinite displacements")
    return Field(disp=disp, grid=grid, path=path)


def grid_of(path: str, what: str = "reference image") -> Grid:
    """The grid of a NIfTI image (its data are not needed)."""
    return load_image(path, what=what, allow_nonfinite=True).grid


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


__all__ = ["Result", "Field", "read_field", "grid_of", "FORWARD", "INVERSE", "JACOBIAN",
           "WARPED", "SUMMARY"]
