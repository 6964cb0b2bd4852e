"""The result of a registration, in memory or as a folder (files in :mod:`nephi.io.layout`).

Directions (as everywhere in nephi; A = moving, B = fixed):

* the forward field (``warp.nii.gz``) lives on the fixed grid: a fixed point p (RAS mm here) goes
  to the moving point p + d(p). It pulls moving images onto the fixed grid and pushes fixed
  points into moving space;
* the inverse field (``inverse_warp.nii.gz``) lives on the moving grid: a moving point q goes to
  the fixed point q + d'(q). It pulls fixed images onto the moving grid and pushes moving points
  into fixed space.

A :class:`Result` made by :func:`nephi.register` holds everything in memory; ``save(folder)``
writes the folder atomically. ``Result.load(folder)`` reads a folder (its files on first use),
so any tool's output in the same format can be warped, mapped and scored the same way. Every
problem a user can cause (missing folder or file, a field that is not an ITK displacement field)
is a :class:`~nephi.errors.NephiInputError` naming the file.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.io.atomic import AtomicDir
from nephi.io.fields import read_field, save_scalar, write_displacement_field
from nephi.io.images import Image, as_image, load_image, save_image
from nephi.io.itk import write_displacement_h5
from nephi.io.itk_affine import write_affine, write_composite
from nephi.io.layout import (AFFINE, COMPOSITE, DEFORMABLE, FORWARD, FORWARD_H5, IMAGE_SUFFIXES,
                             INVERSE, INVERSE_AFFINE, INVERSE_COMPOSITE, INVERSE_DEFORMABLE,
                             INVERSE_H5, JACOBIAN, LANDMARKS_MOVING, LOG_JACOBIAN, QC_FILE,
                             SUMMARY, WARPED, image_file)
from nephi.io.points import save_points
from nephi.results.jacobian import log_jacobian as log_of_jacobian
from nephi.results.quicklook import write_overview
from nephi.results.warp import warp_image
from nephi.transforms.affine import Affine
from nephi.transforms.displacement import Field


__all__ = ["Result", "DIRECTIONS", "summary_line"]

DIRECTIONS = ("fixed-to-moving", "moving-to-fixed")

# NIfTI files of a result folder written at once: gzip (the .nii.gz fields) releases the GIL.
# Measured on a head-CT feed-forward result (2 cores): 0.45-0.59 s to write the folder with two
# writers, 0.66-0.85 s with one.
WRITERS = 2


class Result:
    """A registration result: the forward and inverse displacement fields, the Jacobian
    determinant and warped image on the fixed grid, the mapped landmarks and the summary.

    Construct it with the arrays (what :func:`nephi.register` does) or with
    :meth:`Result.load`. ``fixed`` / ``moving`` (:class:`~nephi.io.images.Image`, optional) are
    the inputs, used by quick-look pictures; ``mask`` the fixed mask (bool, fixed grid).
    """

    def __init__(self, forward: Field | None = None, inverse: Field | None = None,
                 jacobian: np.ndarray | None = None, warped: np.ndarray | None = None,
                 summary: dict | None = None, landmarks_moving: np.ndarray | None = None,
                 fixed: Image | None = None, moving: Image | None = None,
                 mask: np.ndarray | None = None, path: str | None = None,
                 what: str = "result folder", affine: Affine | None = None):
        self.path, self.what = path, what
        self.affine = affine
        self.fixed, self.moving, self.mask = fixed, moving, mask
        self.landmarks_moving = landmarks_moving
        self._cache = {FORWARD: forward, INVERSE: inverse, JACOBIAN: jacobian, WARPED: warped,
                       SUMMARY: summary}

    # ------------------------------------------------------------------ folders
    @classmethod
    def load(cls, path: str, what: str = "result folder") -> "Result":
        """A result folder written by ``nephi-infer`` (or any tool writing the same files)."""
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
        return cls(path=path, what=what)

    def save(self, folder: str, qc: bool = False, image_suffix: str = ".nii.gz",
             log_jacobian: bool = False) -> str:
        """Write the result folder ``folder`` atomically (it appears whole or not at all):
        fields as ITK NIfTI and HDF5, the Jacobian determinant (and with ``log_jacobian`` its
        log, NaN at folds), the warped image (both in the format of ``image_suffix``: .nii.gz,
        .nii, .nrrd or .mha), mapped landmarks, summary.json and, with ``qc``, the quick-look
        picture. Returns ``folder``."""
        forward, inverse = self.field(), self.field(inverse=True)
        summary = dict(self.summary)
        nifti_images = image_suffix in (".nii", ".nii.gz")
        with AtomicDir(folder) as tmp, ThreadPoolExecutor(WRITERS) as pool:
            jobs = []

            def write(function, name: str, *args, nifti: bool = False) -> None:
                """NIfTI files (nibabel) go to the writer threads; the rest is written here,
                one at a time (SimpleITK's HDF5 and image writers are not thread-safe)."""
                if nifti:
                    jobs.append(pool.submit(function, os.path.join(tmp, name), *args))
                else:
                    function(os.path.join(tmp, name), *args)

            if self._cache[WARPED] is not None:
                write(save_image, image_file(WARPED, image_suffix), self.scalar(WARPED),
                      forward.grid, nifti=nifti_images)
            write(write_displacement_field, FORWARD, forward.disp, forward.grid, nifti=True)
            write(write_displacement_field, INVERSE, inverse.disp, inverse.grid, nifti=True)
            if self._cache[JACOBIAN] is not None:
                write(save_scalar, image_file(JACOBIAN, image_suffix), self.scalar(JACOBIAN),
                      forward.grid, nifti=nifti_images)
                if log_jacobian:
                    write(save_scalar, image_file(LOG_JACOBIAN, image_suffix),
                          log_of_jacobian(self.scalar(JACOBIAN)), forward.grid,
                          nifti=nifti_images)
            write(write_displacement_h5, FORWARD_H5, forward.disp, forward.grid)
            write(write_displacement_h5, INVERSE_H5, inverse.disp, inverse.grid)
            if self.affine is not None:
                inverse_affine = self.affine.inverse()
                for affine, whole, names in (
                        (self.affine, forward, (AFFINE, DEFORMABLE, COMPOSITE)),
                        (inverse_affine, inverse, (INVERSE_AFFINE, INVERSE_DEFORMABLE,
                                                   INVERSE_COMPOSITE))):
                    part = affine.field_before(whole)
                    write(write_affine, names[0], affine)
                    write(write_displacement_field, names[1], part.disp, part.grid, nifti=True)
                    write(write_composite, names[2], affine, part)
            if self.landmarks_moving is not None:
                write(save_points, LANDMARKS_MOVING, self.landmarks_moving)
            if qc:
                write(write_overview, QC_FILE, self.input_image("fixed"),
                      self.input_image("moving"), self.scalar(WARPED), forward.disp,
                      self.scalar(JACOBIAN), self.mask, summary,
                      os.path.basename(os.path.normpath(folder)))
            with open(os.path.join(tmp, SUMMARY), "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
            for job in jobs:  # the first failure (a full disk, say) ends the folder
                job.result()
        self.path = folder
        return folder

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path)) if self.path else "result"

    def file(self, name: str) -> str:
        """Path of ``name`` inside the folder; NephiInputError when it is missing."""
        full = os.path.join(self.path or "", name)
        if not self.path or not os.path.isfile(full):
            raise NephiInputError(f"{self.what} {self.path}: {name} is missing (re-run "
                                  "nephi-infer, or copy the whole result folder)")
        return full

    def has(self, name: str) -> bool:
        return self.path is not None and os.path.isfile(os.path.join(self.path, name))

    # ------------------------------------------------------------------ contents
    @property
    def summary(self) -> dict:
        """summary.json as a dict ({} when the folder has none)."""
        if self._cache[SUMMARY] is None:
            if not self.has(SUMMARY):
                return {}
            path = self.file(SUMMARY)
            try:
                with open(path, encoding="utf-8") as fh:
                    value = json.load(fh)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise NephiInputError(f"{path}: not a readable summary ({exc})") from None
            if not isinstance(value, dict):
                raise NephiInputError(f"{path}: not a summary (top level is not a mapping)")
            self._cache[SUMMARY] = value
        return self._cache[SUMMARY]

    def field(self, inverse: bool = False) -> Field:
        """The forward field (fixed grid) or, with ``inverse``, the backward one (moving grid)."""
        key = INVERSE if inverse else FORWARD
        if self._cache[key] is None:
            self._cache[key] = read_field(self.file(key))
        return self._cache[key]

    @property
    def fixed_grid(self) -> Grid:
        return self.field().grid

    @property
    def moving_grid(self) -> Grid:
        return self.field(inverse=True).grid

    def scalar(self, name: str) -> np.ndarray:
        """A scalar map on the fixed grid (``JACOBIAN`` or ``WARPED``), float32 (*S_fixed)."""
        if self._cache.get(name) is None:
            img = load_image(self.file(self._image_name(name)),
                             what=f"{self.what} {self.path}: {name}", allow_nonfinite=True)
            if img.grid.shape != self.fixed_grid.shape:
                raise NephiInputError(f"{img.path}: shape {img.grid.shape} differs from the "
                                      f"warp's grid {self.fixed_grid.shape}")
            self._cache[name] = img.data
        return self._cache[name]

    def _image_name(self, name: str) -> str:
        """The file of image ``name`` in the folder, in whichever format it was written."""
        for suffix in IMAGE_SUFFIXES:
            if self.has(image_file(name, suffix)):
                return image_file(name, suffix)
        return name

    def input_image(self, role: str, override: str | None = None) -> Image:
        """The fixed or moving image the registration read (``role`` 'fixed' or 'moving'):
        ``override`` if given, the image held in memory, else the path in summary.json."""
        held = self.fixed if role == "fixed" else self.moving
        if override is None and held is not None:
            return held
        path = override or self.summary.get(role)
        if not path:
            raise NephiInputError(f"{self.what} {self.path}: summary.json does not name the "
                                  f"{role} image; give it with --{role}")
        return load_image(path, what=f"{role} image (of {self.path})")

    def recorded_path(self, key: str) -> str | None:
        """A path recorded in summary.json under ``key`` (e.g. 'landmarks', 'mask'), or None."""
        value = self.summary.get(key)
        return value if isinstance(value, str) and value else None

    # ------------------------------------------------------------------ using it
    def map_points(self, points_ras: np.ndarray, direction: str = "fixed-to-moving") -> np.ndarray:
        """Points (N, d) RAS mm mapped ``fixed-to-moving`` (forward field) or
        ``moving-to-fixed`` (inverse field); zero displacement outside the field's grid."""
        if direction not in DIRECTIONS:
            raise NephiInputError(f"--direction {direction}: expected one of "
                                  f"{', '.join(DIRECTIONS)}")
        return self.field(inverse=direction == "moving-to-fixed")(points_ras)

    def warp(self, image, interp: str = "linear", inverse: bool = False,
             reference: Grid | None = None) -> Image:
        """``image`` (a path, a nibabel image, ``(array, affine)`` or an Image) pulled onto the
        fixed grid through the forward field (a moving-space image), or with ``inverse`` onto the moving
        grid (a fixed-space image); ``reference`` another output grid. ``interp``: linear, cubic,
        nearest or label (:mod:`nephi.results.warp`). The output keeps the image's voxel type."""
        image = as_image(image, what="image")
        field = self.field(inverse=inverse)
        grid = reference or field.grid
        data = warp_image(image, field, grid, interp)
        return Image(data=data, grid=grid, path="", dtype=data.dtype)


def summary_line(summary: dict, full: bool = False) -> str:
    """One line of a summary's headline numbers (NCC, folding, landmark error; with ``full``
    also inverse consistency and wall time)."""
    text = (f"NCC {summary['ncc_before']:.4f} -> {summary['ncc_after']:.4f}, folding "
            f"{summary['folding_percent']:.4f} %")
    if full:
        text += (f", inverse consistency {summary['inverse_consistency_mm_mean']:.3f} mm, "
                 f"{summary['wall_time_s']:.1f} s")
    if "landmark_error_after_mm" in summary:
        text += (f", landmark error {summary['landmark_error_before_mm']['mean_mm']:.2f} -> "
                 f"{summary['landmark_error_after_mm']['mean_mm']:.2f} mm")
    return text
