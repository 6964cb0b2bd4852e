"""Evaluating result folders (``nephi-eval``): landmarks, Dice, folding, inverse consistency.

Everything is computed from the files of a result folder (``warp.nii.gz``,
``inverse_warp.nii.gz``, ``jacobian.nii.gz``, ``summary.json``), so any tool's output in the
same format can be scored the same way. A = moving, B = fixed; mm are RAS millimetres.

Landmark error
    Fixed points p_i are mapped into moving space with ``warp.nii.gz`` exactly as
    ``landmarks_moving.csv`` is made (p + d(p), d linear, zero outside the fixed grid:
    :func:`nephi.transforms.displacement.map_points`) and compared with the moving points q_i:
    e_i = |phi(p_i) - q_i|. Reported: mean, standard deviation (population, ddof 0), 95th
    percentile (numpy's linear interpolation), maximum, and the mean absolute error along each
    RAS axis (x: right-left, y: anterior-posterior, z: superior-inferior). "Before" is the
    identity: |p_i - q_i|. Without explicit point files the paths recorded in summary.json
    (``landmarks``, ``moving_landmarks``) are used, so the numbers equal the run's own
    ``landmark_error_after_mm``.

Snap-to-voxel (``snap_to_voxel=True``, the DIR-LAB convention)
    Each mapped point phi(p_i) is replaced by the centre of the moving-image voxel nearest to it
    before measuring: its continuous voxel index in the moving grid (the grid of
    ``inverse_warp.nii.gz``, which is the moving image's) is rounded per axis to the nearest
    integer, halves rounded up (floor(index + 0.5)), and mapped back to mm. The moving points are
    used as given (DIR-LAB's are voxel centres already). The "before" error is not snapped.

Dice
    The moving label map is warped onto the fixed label map's grid with ``warp.nii.gz`` and
    generic-label interpolation (:mod:`nephi.results.warp`); per label l != 0 present in either map,
    Dice = 2 |F_l & W_l| / (|F_l| + |W_l|). The mean is over those labels. "Before" uses the
    identity (physical space) instead of the warp.

Folding
    Percent of fixed-grid voxels with det D phi_AB <= 0 in ``jacobian.nii.gz``.

Inverse consistency
    At every fixed voxel centre x: |x + d(x) + d'(x + d(x)) - x| in mm, with d from
    ``warp.nii.gz`` and d' from ``inverse_warp.nii.gz`` (linear). Only voxels whose image
    x + d(x) lies inside the moving grid count (d' is zero outside it); their percentage is
    reported. This measures the exported fields; summary.json's inverse_consistency_mm_* measure
    the networks themselves and differ by the interpolation of d'.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from nephi.errors import NephiInputError
from nephi.io.atomic import check_output_path, write_file
from nephi.io.images import load_image
from nephi.io.layout import JACOBIAN
from nephi.io.points import load_points
from nephi.results.metrics import dice_scores, folding_percent, landmark_errors, mean_dice
from nephi.results.result import Result
from nephi.results.warp import DEFAULT_CHUNK, voxel_points, warp_image
from nephi.transforms.displacement import map_points


AXES = ("x", "y", "z")


def landmark_metrics(result: Result, fixed_points: np.ndarray, moving_points: np.ndarray,
                     snap_to_voxel: bool = False) -> dict:
    """Landmark errors (see module docstring) of points (N, d) in RAS mm -> flat dict."""
    if fixed_points.shape != moving_points.shape:
        raise NephiInputError(f"{result.path}: {len(fixed_points)} fixed points but "
                              f"{len(moving_points)} moving points")
    field = result.field()
    mapped = map_points(fixed_points, field.disp, field.grid)
    if snap_to_voxel:
        grid = result.moving_grid
        index = np.floor(grid.ras_to_index_points(mapped) + 0.5)
        mapped = grid.index_to_ras_points(index)
    before = landmark_errors(fixed_points, moving_points)
    after = landmark_errors(mapped, moving_points)
    row = {"landmarks_n": after["count"],
           "landmark_convention": "snap-to-voxel" if snap_to_voxel else "continuous",
           "landmark_before_mean_mm": before["mean_mm"],
           "landmark_before_std_mm": before["std_mm"],
           "landmark_mean_mm": after["mean_mm"], "landmark_std_mm": after["std_mm"],
           "landmark_p95_mm": after["p95_mm"], "landmark_max_mm": after["max_mm"]}
    abs_err = np.abs(mapped - moving_points).mean(axis=0)
    for axis, value in zip(AXES, abs_err):
        row[f"landmark_abs_{axis}_mm"] = float(value)
    return row


def dice_metrics(result: Result, fixed_labels_path: str, moving_labels_path: str) -> dict:
    """Dice per label after (warp) and before (identity), and their means -> flat dict."""
    fixed = load_image(fixed_labels_path, what="--fixed-labels")
    moving = load_image(moving_labels_path, what="--moving-labels")
    field = result.field()
    for img, option in ((fixed, "--fixed-labels"), (moving, "--moving-labels")):
        if img.ndim != field.grid.ndim:
            raise NephiInputError(f"{option} {img.path}: is {img.ndim}-D but the result's "
                                  f"warp.nii.gz is {field.grid.ndim}-D")
    reference = fixed.data.astype(fixed.dtype) if fixed.dtype.kind in "iu" else fixed.data
    warped = warp_image(moving, field, fixed.grid, "label")
    after = dice_scores(reference, warped)
    row = {"dice_mean": mean_dice(reference, warped),
           "dice_before_mean": mean_dice(reference, warp_image(moving, None, fixed.grid, "label"))}
    for name, value in after.items():
        row[f"dice_{name}"] = value
    return row


def folding_metrics(result: Result) -> dict:
    jac = result.scalar(JACOBIAN)
    return {"folding_percent": folding_percent(jac),
            "folding_voxels": int(np.sum(jac <= 0)), "jacobian_min": float(jac.min())}


def inverse_consistency(result: Result, chunk: int = DEFAULT_CHUNK) -> dict:
    """Inverse consistency of the exported fields at fixed voxels (module docstring)."""
    forward, backward = result.field(), result.field(inverse=True)
    grid, d = forward.grid, forward.grid.ndim
    flat = forward.disp.reshape(-1, d)
    upper = np.asarray(backward.grid.shape, dtype=np.float64) - 1.0
    errors = []
    for start in range(0, grid.num_voxels, chunk):
        stop = min(start + chunk, grid.num_voxels)
        x = voxel_points(grid, start, stop)
        y = x + flat[start:stop]
        index = backward.grid.ras_to_index_points(y)
        keep = np.all((index >= 0.0) & (index <= upper), axis=-1)
        back = map_points(y[keep], backward.disp, backward.grid)
        errors.append(np.linalg.norm(back - x[keep], axis=-1).astype(np.float32))
    err = np.concatenate(errors)
    if err.size == 0:
        return {"inverse_consistency_mm_mean": math.nan, "inverse_consistency_mm_p95": math.nan,
                "inverse_consistency_inside_percent": 0.0}
    return {"inverse_consistency_mm_mean": float(err.mean()),
            "inverse_consistency_mm_p95": float(np.percentile(err, 95)),
            "inverse_consistency_inside_percent": float(100.0 * err.size / grid.num_voxels)}


def evaluate_result(result: Result, fixed_points: str | None = None,
                    moving_points: str | None = None, fixed_labels: str | None = None,
                    moving_labels: str | None = None, snap_to_voxel: bool = False) -> dict:
    """All metrics of one result folder as a flat dict (one CSV row).

    Point files default to the paths recorded in summary.json; labels are evaluated only when
    both label maps are given.
    """
    row = {"result": os.path.abspath(result.path), "name": result.name}
    fixed_path = fixed_points or result.recorded_path("landmarks")
    moving_path = moving_points or result.recorded_path("moving_landmarks")
    if fixed_path and moving_path:
        d = result.fixed_grid.ndim
        origin = "--fixed-points" if fixed_points else f"{result.path}: summary.json landmarks"
        moving_origin = ("--moving-points" if moving_points
                         else f"{result.path}: summary.json moving_landmarks")
        row.update(landmark_metrics(result, load_points(fixed_path, d, origin),
                                    load_points(moving_path, d, moving_origin), snap_to_voxel))
    if fixed_labels and moving_labels:
        row.update(dice_metrics(result, fixed_labels, moving_labels))
    row.update(folding_metrics(result))
    row.update(inverse_consistency(result))
    return row


def check_options(fixed_points, moving_points, fixed_labels, moving_labels,
                  prefix: str) -> None:
    """Point files and label maps come in pairs; the report prefix must be writable."""
    check_output_path(f"{prefix}.csv", option="--out")
    if bool(fixed_points) != bool(moving_points):
        raise NephiInputError("--fixed-points and --moving-points go together")
    if bool(fixed_labels) != bool(moving_labels):
        raise NephiInputError("--fixed-labels and --moving-labels go together")


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(rows: list) -> str:
    """A markdown table of the headline numbers, one line per result."""
    head = ("| result | landmarks before (mm) | landmarks after (mm) | p95 (mm) | Dice before | "
            "Dice after | folding (%) | inverse consistency (mm) |")
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        lm_before = (f"{_fmt(row['landmark_before_mean_mm'])} ± "
                     f"{_fmt(row['landmark_before_std_mm'])}" if "landmark_mean_mm" in row else "-")
        lm_after = (f"{_fmt(row['landmark_mean_mm'])} ± {_fmt(row['landmark_std_mm'])}"
                    if "landmark_mean_mm" in row else "-")
        lines.append(
            f"| {row['name']} | {lm_before} | {lm_after} | {_fmt(row.get('landmark_p95_mm'))} | "
            f"{_fmt(row.get('dice_before_mean'), 3)} | {_fmt(row.get('dice_mean'), 3)} | "
            f"{_fmt(row['folding_percent'], 4)} | "
            f"{_fmt(row['inverse_consistency_mm_mean'], 3)} |")
    conventions = {row.get("landmark_convention") for row in rows} - {None}
    if conventions:
        lines.append("")
        lines.append(f"Landmark convention: {', '.join(sorted(conventions))} (see nephi.evaluate). "
                     "Inverse consistency of the exported fields, mean over fixed voxels.")
    return "\n".join(lines) + "\n"


def write_report(prefix: str, rows: list) -> tuple:
    """Write ``prefix.md`` (markdown table) and ``prefix.csv`` (every metric, one row per
    result; per-label Dice columns are the union over results). Returns both paths."""
    columns = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    md_path, csv_path = f"{prefix}.md", f"{prefix}.csv"
    table = markdown_table(rows)

    def write_md(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(table)

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            _write_csv(fh, columns, rows)

    write_file(md_path, write_md)
    write_file(csv_path, write_csv)
    return md_path, csv_path


def _write_csv(fh, columns: list, rows: list) -> None:
    writer = csv.DictWriter(fh, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
