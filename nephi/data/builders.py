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
import dataclasses
import multiprocessing
import os
import sys
from typing import Callable, Iterable

import numpy as np
from nibabel import affines as nib_affines

from nephi.data.pairfile import PairFileWriter
from nephi.data.preprocess import (PrepConfig, align_moving, assign_splits, per_axis,
                                   preprocess_pair)
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
    """A pair of a pairs-CSV row: (row, prep)."""
    row, prep = job
    moving = load_image(row["moving"], what="moving image")
    fixed = load_image(row["fixed"], what="fixed image")
    masks = [load_mask(row[k], img.grid, what=k.replace("_", " ")) if row[k] else None
             for k, img in (("moving_mask", moving), ("fixed_mask", fixed))]
    alignment = None
    if prep.align != "none":
        moving, alignment = align_moving(moving, fixed, prep, masks[0], masks[1])
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
    pair.alignment = alignment
    d = fixed.ndim
    if row["fixed_points"]:
        pair.fixed_points = load_points(row["fixed_points"], d, "fixed points")
    if row["moving_points"]:
        pair.moving_points = aligned_points(pair, load_points(row["moving_points"], d,
                                                              "moving points"))
    if (pair.fixed_points is None) != (pair.moving_points is None) or (
            pair.fixed_points is not None and len(pair.fixed_points) != len(pair.moving_points)):
        raise NephiInputError(f"pairs CSV line {row['line']}: moving_points and fixed_points "
                              "must both be given, with the same number of points")
    return pair


def aligned_points(pair, points: np.ndarray) -> np.ndarray:
    """Moving points (K, d) RAS where the pair's aligned moving image has them: A^-1(p)."""
    if pair.alignment is None:
        return points
    return nib_affines.apply_affine(np.linalg.inv(pair.alignment), points)


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


def _row_of_pair(moving: dict, fixed: dict, points: bool) -> dict:
    """A pairs-CSV row (:func:`_csv_job`) of two scans-CSV rows; with ``points`` their points."""
    row = {"line": fixed["line"], "moving": moving["image"], "fixed": fixed["image"]}
    for side, scan in (("moving", moving), ("fixed", fixed)):
        row[f"{side}_mask"], row[f"{side}_label"] = scan["mask"], scan["label"]
        row[f"{side}_points"] = scan["points"] if points else None
    return row


def intra_deformation(grid: Grid, max_mm: float, scale_mm: float, seed: int):
    """The known map T of an intra-subject pair on a network ``grid``: a
    :class:`nephi.data.augment.SpatialMap` (no affine part) of the random diffeomorphism of
    largest velocity ``max_mm`` drawn from ``seed``. The moving image is the scan pulled back
    by T; a scan point p sits at T^-1(p) in it."""
    import torch

    from nephi.data.augment import SpatialMap, random_diffeomorphisms

    frame = Grid(grid.shape, np.diag([*grid.spacing, 1.0]))
    forward, inverse = random_diffeomorphisms(frame, torch.tensor([float(max_mm)]), scale_mm,
                                              torch.Generator().manual_seed(seed))
    return SpatialMap(torch.eye(grid.ndim + 1, dtype=torch.float64)[None], frame, forward,
                      inverse)


def _scan_pair_job(job: tuple):
    """A pair of ``nephi-prep scans``: ("inter", moving scan, fixed scan, prep) or ("intra",
    scan, prep, (max_mm, scale_mm, seed))."""
    import torch

    if job[0] == "inter":
        _, moving, fixed, prep = job
        pair = _csv_job((_row_of_pair(moving, fixed, points=False), prep))
        if moving["points"] and fixed["points"]:
            d = pair.grid.ndim
            pts = [load_points(s["points"], d, "points") for s in (moving, fixed)]
            if len(pts[0]) == len(pts[1]):  # row k of every scan: the same landmark
                pair.moving_points, pair.fixed_points = aligned_points(pair, pts[0]), pts[1]
        pair.source = f"nephi-prep scans: inter-subject, scans {moving['name']} -> {fixed['name']}"
        return pair
    _, scan, prep, (max_mm, scale_mm, seed) = job
    # a scan and a deformation of itself: nothing to align
    pair = _csv_job((_row_of_pair(scan, scan, points=bool(scan["points"])),
                     dataclasses.replace(prep, align="none")))
    grid = pair.grid
    spatial = intra_deformation(grid, max_mm, scale_mm, seed)

    def pulled(volume, mode):
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32)).reshape(1, 1, *grid.shape)
        return spatial.resample(vol, mode=mode).reshape(grid.shape).numpy()

    pair.moving = pulled(pair.fixed, "bilinear")
    if pair.fixed_mask is not None:
        pair.moving_mask = pulled(pair.fixed_mask, "nearest") > 0.5
    if pair.fixed_label is not None:
        pair.moving_label = np.rint(pulled(pair.fixed_label, "nearest")).astype(np.int16)
    if pair.fixed_points is not None:
        frame = torch.as_tensor(grid.ras_to_normalized_points(pair.fixed_points))[None]
        pair.moving_points = grid.normalized_to_ras_points(spatial.inverse(frame)[0].numpy())
    pair.source = (f"nephi-prep scans: intra-subject, scan {scan['name']} pulled back by "
                   f"nephi.data.builders.intra_deformation(max_mm={max_mm:g}, "
                   f"scale_mm={scale_mm:g}, seed={seed})")
    return pair


def build_from_scans(scans: list, out: str, prep: PrepConfig, pairs_per_scan: int = 4,
                     intra: int = 0, intra_max_mm: float = 8.0, intra_scale_mm: float = 40.0,
                     val_fraction: float = 0.1, seed: int = 0, split_seed: int = 0,
                     workers: int = 1, builder: str = "") -> dict:
    """Training pairs among the unpaired scans of :func:`nephi.data.preprocess.read_scans_csv`.

    Subjects (column ``subject``, else each scan its own) are split into training and
    validation (``val_fraction`` of the subjects, seeded by ``split_seed``), so no subject is on
    both sides. Within each split, every scan is the fixed image of ``pairs_per_scan`` pairs
    (fewer when the split has fewer other scans) whose moving scans are drawn without
    replacement among the others (inter-subject, named ``MOVING__FIXED``; landmarks kept when
    both scans have as many); with ``intra`` > 0 each scan is also the fixed image of ``intra``
    pairs whose moving image is the scan pulled back by a random diffeomorphism of largest
    velocity ``intra_max_mm`` mm (:func:`intra_deformation`; named ``SCAN__deformed_K``),
    its landmarks moved by the inverse. Every draw comes from ``seed``. Returns the counts."""
    for option, value in (("--pairs-per-scan", pairs_per_scan), ("--intra", intra)):
        if value < 0:
            raise NephiInputError(f"{option}: must be >= 0, got {value}")
    if intra and not (intra_max_mm > 0 and intra_scale_mm > 0):
        raise NephiInputError("--intra-max-mm and --intra-scale-mm: must be positive")
    scans = [{**row, "name": row["name"] or f"scan_{i:04d}"} for i, row in enumerate(scans)]
    if len({s["name"] for s in scans}) != len(scans):
        raise NephiInputError("scan names must be unique (column name)")
    subjects = list(dict.fromkeys(s["subject"] or s["name"] for s in scans))
    split_of = dict(zip(subjects, assign_splits(len(subjects), val_fraction, split_seed)))
    if prep.shape is None:
        prep = PrepConfig(**{**prep.to_dict(), "shape": default_target_shape(
            [{"fixed": s["image"]} for s in scans], prep.spacing)})
    rng = np.random.default_rng(seed)
    names, splits, jobs = [], [], []
    for split in ("train", "val"):
        members = [k for k, s in enumerate(scans) if split_of[s["subject"] or s["name"]] == split]
        for j in members:
            others = [k for k in members if k != j]
            for k in rng.permutation(others)[:pairs_per_scan]:
                names.append(f"{scans[k]['name']}__{scans[j]['name']}")
                jobs.append(("inter", scans[k], scans[j], prep))
                splits.append(split)
            for n in range(intra):
                deform = (intra_max_mm, intra_scale_mm, int(rng.integers(2 ** 31)))
                names.append(f"{scans[j]['name']}__deformed_{n}")
                jobs.append(("intra", scans[j], prep, deform))
                splits.append(split)
    if not jobs:
        raise NephiInputError("nephi-prep scans: no pair to write (inter-subject pairs need two "
                              "scans in a split; or ask for --intra pairs)")
    return _write(out, prep, builder, names, splits, _run(_scan_pair_job, jobs, workers))


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


__all__ = ["build_from_rows", "build_from_scans", "intra_deformation", "build_synthetic_lung",
           "build_triangles_circles", "default_target_shape", "LUNG_WINDOW"]
