"""The metrics of a registration, one definition each: landmark error, Dice, folding.

Every command and the trainer use these functions, so the number that selects ``best.pt`` during
training is the number ``nephi-eval`` reports.

* Landmark error: Euclidean distance (mm) between mapped and target points, row by row; mean,
  standard deviation (population, ddof 0), 95th percentile (numpy's linear interpolation), max.
* Dice: per label l != 0 present in EITHER map, 2 |F_l & W_l| / (|F_l| + |W_l|); the mean is over
  those labels (a label the warp loses or invents counts as 0).
* Folding: percent of voxels with det D phi <= 0.
"""

from __future__ import annotations

import math

import numpy as np


__all__ = ["landmark_errors", "dice_scores", "mean_dice", "foreground_dice", "folding_percent"]


def landmark_errors(mapped: np.ndarray, target: np.ndarray) -> dict:
    """Euclidean distances (mm) between corresponding rows, summarized."""
    dist = np.linalg.norm(np.asarray(mapped) - np.asarray(target), axis=1)
    return {
        "mean_mm": float(dist.mean()),
        "std_mm": float(dist.std()),
        "p95_mm": float(np.percentile(dist, 95)),
        "max_mm": float(dist.max()),
        "count": int(dist.size),
    }


def dice_scores(fixed_labels: np.ndarray, warped_labels: np.ndarray) -> dict:
    """{label: Dice} for every non-zero label present in either map (same shape)."""
    labels = np.union1d(np.unique(fixed_labels), np.unique(warped_labels))
    out = {}
    for value in labels[labels != 0]:
        a, b = fixed_labels == value, warped_labels == value
        total = int(a.sum()) + int(b.sum())
        out[_label_name(value)] = 2.0 * int((a & b).sum()) / total
    return out


def _label_name(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def mean_dice(fixed_labels: np.ndarray, warped_labels: np.ndarray) -> float:
    """Mean of :func:`dice_scores` (NaN when neither map holds a label)."""
    scores = dice_scores(fixed_labels, warped_labels)
    return float(np.mean(list(scores.values()))) if scores else math.nan


def foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`dice_scores` of the foregrounds (value > 0) of two maps; 1.0 when both are empty
    (nothing to overlap, nothing missed)."""
    return dice_scores(np.asarray(a) > 0, np.asarray(b) > 0).get("1", 1.0)


def folding_percent(jacobian: np.ndarray) -> float:
    """Percent of the voxels of a Jacobian-determinant map with det <= 0."""
    return float(100.0 * np.mean(np.asarray(jacobian) <= 0))
