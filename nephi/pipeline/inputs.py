"""The inputs of one registration, checked at the door, and the device it runs on."""

from __future__ import annotations

import os

import numpy as np
import torch

from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.io.images import Image, as_image, load_mask
from nephi.io.points import load_points


__all__ = ["LoadedPair", "as_mask", "select_device"]


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NephiInputError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise NephiInputError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def _abspath(path) -> str | None:
    return os.path.abspath(path) if isinstance(path, (str, os.PathLike)) and path else None


def as_mask(mask, grid: Grid, what: str = "mask") -> np.ndarray | None:
    """A mask on ``grid`` (a path, or an array that is > 0 inside) as bool (*grid.shape);
    None stays None. Empty masks and other shapes are input errors naming ``what``."""
    if mask is None or (isinstance(mask, str) and not mask):
        return None
    if isinstance(mask, (str, os.PathLike)):
        return load_mask(os.fspath(mask), grid, what=what)
    mask = np.asarray(mask) > 0
    if mask.shape != grid.shape:
        raise NephiInputError(f"{what}: shape {mask.shape} differs from its image's {grid.shape}")
    if not mask.any():
        raise NephiInputError(f"{what}: no voxel is set")
    return mask


class LoadedPair:
    """Validated inputs of one registration (A = moving, B = fixed).

    ``moving``, ``fixed``: paths, nibabel images, ``(array, affine)`` pairs or
    :class:`~nephi.io.images.Image`; ``mask``: fixed-image mask (a path, or a bool array on the
    fixed grid); ``landmarks``: fixed-space points (a CSV path with header x,y[,z] in RAS mm, or
    an (N, d) array); ``moving_landmarks``: the corresponding moving points (same forms);
    ``moving_mask``: moving-image mask (path or bool array on the moving grid).
    """

    def __init__(self, moving, fixed, mask=None, landmarks=None, moving_landmarks=None,
                 moving_mask=None):
        self.moving: Image = as_image(moving, what="moving image")
        self.fixed: Image = as_image(fixed, what="fixed image")
        self.mask_path = _abspath(mask)
        self.landmarks_path = _abspath(landmarks)
        self.moving_landmarks_path = _abspath(moving_landmarks)
        if self.moving.ndim != self.fixed.ndim:
            raise NephiInputError(f"moving image {self.moving.path} is {self.moving.ndim}-D but "
                                  f"fixed image {self.fixed.path} is {self.fixed.ndim}-D")
        self.mask = as_mask(mask, self.fixed.grid, "mask")
        self.moving_mask_path = _abspath(moving_mask)
        self.moving_mask = as_mask(moving_mask, self.moving.grid, "moving mask")
        d = self.fixed.ndim
        self.landmarks = self._points(landmarks, d, "landmarks")
        self.moving_landmarks = self._points(moving_landmarks, d, "moving landmarks")
        if self.moving_landmarks is not None:
            if self.landmarks is None:
                raise NephiInputError("--moving-landmarks needs --landmarks (the fixed points)")
            if len(self.moving_landmarks) != len(self.landmarks):
                raise NephiInputError(
                    f"moving landmarks {self.moving_landmarks_path or ''}: "
                    f"{len(self.moving_landmarks)} points but landmarks has "
                    f"{len(self.landmarks)}")

    @staticmethod
    def _points(points, d: int, what: str) -> np.ndarray | None:
        if points is None or (isinstance(points, str) and not points):
            return None
        if isinstance(points, (str, os.PathLike)):
            return load_points(os.fspath(points), d, what)
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != d or not np.all(np.isfinite(points)):
            raise NephiInputError(f"{what}: expected finite points of shape (N, {d}), got "
                                  f"{points.shape}")
        return points
