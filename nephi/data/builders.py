"""Builders of nephi pair files (HDF5, layout in :mod:`nephi.data.pairfile`).

Each builder turns a source of pairs into one file: pairs listed in a CSV of NIfTI files, a
COPDGene-style folder (:mod:`nephi.data.copdgene`), a synthetic lung population
(:mod:`nephi.data.synthetic_lung`) or Triangles-and-Circles (:mod:`nephi.data.triangles_circles`).
Every pair goes through :func:`nephi.data.preprocess.preprocess_pair`, the same code feed-forward
inference uses. ``workers`` > 1 preprocesses pairs in that many processes; one process writes.
Moving = A, fixed = B; for lungs moving = exhale, fixed = inhale.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
from typing import Callable, Iterable

import numpy as np

from nephi.data.pairfile import PairFileWriter
from nephi.data.preprocess import PrepConfig, assign_splits, per_axis, preprocess_pair
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid, spatial_affine
from nephi.io.images import Image, load_image, load_mask
from nephi.io.points import load_points


LUNG_WINDOW = {"method": "window", "low": 1.0, "high": 99.0, "window": [-1000.0, 0.0]}


NO_INTENSITY_CHANGE = {"method": "none", "low": 1.0, "high": 99.0, "window": [-1000.0, 0.0]}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(fn: Callable, jobs: list, workers: int) -> Iterable:
    """Yield fn(job) in order, in ``workers`` spawned processes (inline when workers <= 1)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_init_worker) as pool:
        yield from pool.map(fn, jobs)


def _write(out: str, prep: PrepConfig, builder: str, names: list, splits: list,
           prepared: Iterable) -> dict:
    """Write the prepared pairs in order; a running count goes to stderr when it is a terminal."""
    progress = sys.stderr.isatty()
    counts = {"train": 0, "val": 0}
    with PairFileWriter(out, prep, builder=builder) as writer:
        for k, (name, split, pair) in enumerate(zip(names, splits, prepared), start=1):
            writer.add(name, pair, split)
            counts[split] += 1
            if progress:
                sys.stderr.write(f"\r{os.path.basename(out)}: {k}/{len(names)} pairs")
                sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    return counts


def _csv_job(job: tuple):
    row, prep = job
    moving = load_image(row["moving"], what="moving image")
    fixed = load_image(row["fixed"], what="fixed image")
    masks = [load_mask(row[k], img.grid, what=k.replace("_", " ")) if row[k] else None
             for k, img in (("moving_mask", moving), ("fixed_mask", fixed))]
    labels = []
    for key, img in (("moving_label", moving), ("fixed_label", fixed)):
        if row[key]:
            lab = load_image(row[key], what=key.replace("_", " "))
            if lab.grid.shape != img.grid.shape:
                raise NephiInputError(f"{key} {row[key]}: shape {lab.grid.shape} differs from "
                                      f"its image's {img.grid.shape}")
            labels.append(lab.data)
        else:
            labels.append(None)
    pair = preprocess_pair(moving, fixed, prep, masks[0], masks[1], labels[0], labels[1])
    d = fixed.ndim
    if row["fixed_points"]:
        pair.fixed_points = load_points(row["fixed_points"], d, "fixed points")
    if row["moving_points"]:
        pair.moving_points = load_points(row["moving_points"], d, "moving points")
    if (pair.fixed_points is None) != (pair.moving_points is None) or (
            pair.fixed_points is not None and len(pair.fixed_points) != len(pair.moving_points)):
        raise NephiInputError(f"pairs CSV line {row['line']}: moving_points and fixed_points "
                              "must both be given, with the same number of points")
    return pair


def default_target_shape(rows: list, spacing) -> list:
    """Smallest shape covering every fixed image's field of view at ``spacing`` (headers only)."""
    import nibabel as nib

    best = None
    for row in rows:
        img = nib.load(row["fixed"])
        shape = list(img.shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape.pop()
        d = len(shape)
        grid = Grid(shape, spatial_affine(img.affine, d))
        sp = grid.spacing if spacing is None else per_axis(spacing, d, "spacing")
        need = np.ceil(np.asarray(shape) * grid.spacing / sp - 1e-6).astype(int)
        best = need if best is None else np.maximum(best, need)
    return [int(v) for v in best]


def build_from_rows(rows: list, out: str, prep: PrepConfig, val_fraction: float = 0.1,
                    seed: int = 0, workers: int = 1, builder: str = "") -> dict:
    """Preprocess the pairs of :func:`nephi.data.preprocess.read_pairs_csv` rows into ``out``."""
    if prep.shape is None:
        prep = PrepConfig(**{**prep.to_dict(), "shape": default_target_shape(rows, prep.spacing)})
    names = [r["name"] or f"pair_{i:05d}" for i, r in enumerate(rows)]
    if len(set(names)) != len(names):
        raise NephiInputError("pair names must be unique (column name)")
    splits = assign_splits(len(rows), val_fraction, seed)
    return _write(out, prep, builder, names, splits,
                  _run(_csv_job, [(r, prep) for r in rows], workers))


def _nifti_image(img, path: str = "") -> Image:
    data = np.asarray(img.dataobj, dtype=np.float32)
    return Image(data=data, grid=Grid(data.shape, spatial_affine(img.affine, data.ndim)),
                 path=path)


def _lung_job(job: tuple):
    from nephi.data.synthetic_lung import make_lung_pair

    seed, shape, spacing, motion_mm, n_landmarks, noise_hu, prep = job
    lung = make_lung_pair(shape=shape, spacing=spacing, motion_mm=motion_mm,
                          n_landmarks=n_landmarks, seed=seed, noise_hu=noise_hu)
    moving, fixed = _nifti_image(lung.exhale), _nifti_image(lung.inhale)
    pair = preprocess_pair(moving, fixed, prep,
                           moving_mask=np.asarray(lung.exhale_mask.dataobj) > 0,
                           fixed_mask=np.asarray(lung.inhale_mask.dataobj) > 0)
    pair.fixed_points = lung.inhale_points
    pair.moving_points = lung.exhale_points
    pair.source = f"nephi.data.synthetic_lung.make_lung_pair(seed={seed}, motion_mm={motion_mm})"
    return pair


def build_synthetic_lung(out: str, n: int, shape=(64, 64, 64), spacing=(4.0, 4.0, 4.0),
                         motion_mm: float = 12.0, seed: int = 0, n_landmarks: int = 100,
                         val_fraction: float = 0.1, apply_mask: bool = False, workers: int = 1,
                         noise_hu: float = 20.0, split_seed: int = 0, builder: str = "") -> dict:
    """A population of synthetic inhale/exhale pairs (pair i drawn with seed ``seed + i``),
    lung window [-1000, 0] HU -> [0, 1], network grid = the generated grid, lung masks and
    landmarks stored. Moving = exhale, fixed = inhale."""
    if n < 1:
        raise NephiInputError(f"--n: must be positive, got {n}")
    prep = PrepConfig(spacing=[float(s) for s in spacing], shape=[int(s) for s in shape],
                      intensity=dict(LUNG_WINDOW), apply_mask=apply_mask)
    jobs = [(seed + i, tuple(shape), tuple(spacing), motion_mm, n_landmarks, noise_hu, prep)
            for i in range(n)]
    names = [f"lung_{seed + i:05d}" for i in range(n)]
    return _write(out, prep, builder, names, assign_splits(n, val_fraction, split_seed),
                  _run(_lung_job, jobs, workers))


def build_triangles_circles(out: str, n: int, size: int = 128, mode: str = "solid",
                            seed: int = 0, val_fraction: float = 0.1, split_seed: int = 0,
                            builder: str = "") -> dict:
    """Triangles-and-Circles pairs (2-D, 1 mm pixels, intensities in [0, 1] kept as they are)
    with their label maps (1 = bright region) for Dice. The pairs are those of
    ``make_tc_dataset(n, size, mode, seed)``, drawn one at a time (memory stays small)."""
    from nephi.data.triangles_circles import make_tc_pair

    if n < 1:
        raise NephiInputError(f"--n: must be positive, got {n}")
    prep = PrepConfig(spacing=[1.0, 1.0], shape=[size, size],
                      intensity=dict(NO_INTENSITY_CHANGE), apply_mask=False)
    grid = Grid((size, size), np.eye(3))

    def prepared():
        rng = np.random.default_rng(seed)
        for i in range(n):
            tc = make_tc_pair(size, mode, rng)
            pair = preprocess_pair(Image(tc["moving"], grid), Image(tc["fixed"], grid), prep,
                                   moving_label=tc["moving_label"], fixed_label=tc["fixed_label"])
            pair.source = (f"nephi.data.triangles_circles.make_tc_dataset(n={n}, size={size}, "
                           f"mode={mode}, seed={seed})[{i}] ({tc['shape']})")
            yield pair

    names = [f"tc_{i:05d}" for i in range(n)]
    return _write(out, prep, builder, names, assign_splits(n, val_fraction, split_seed),
                  prepared())


__all__ = ["build_from_rows", "build_synthetic_lung", "build_triangles_circles",
           "default_target_shape", "LUNG_WINDOW"]
