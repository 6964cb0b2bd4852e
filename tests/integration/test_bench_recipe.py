"""The population of the recipe benchmark (``benchmarks/bench_recipe.py``): a subject is the
template pulled back by a known random map, and its landmarks are the template's carried by
that map, so every pair of subjects has exact correspondences."""

import dataclasses
import importlib.util
import os
import sys

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import bench_recipe  # noqa: E402


pytestmark = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                reason="nilearn (MNI152 template) is not installed")


def test_subject_landmarks_are_the_template_landmarks_carried_by_the_known_map():
    from nephi.data.real_scans import brain_landmarks, mni152

    scan = mni152(4.0)
    # band-limited (linear interpolation blurs a voxel-sharp image by itself); "ct": no
    # intensity changes, so values can be compared
    scan = dataclasses.replace(scan, image=ndimage.gaussian_filter(scan.image, 2.0),
                               modality="ct")
    points = brain_landmarks(scan, 100, np.random.default_rng(0), min_mm=8.0)
    subject = bench_recipe.make_subject(scan, points, seed=1000)

    def values(image, pts):
        return ndimage.map_coordinates(image, scan.grid.ras_to_index_points(pts).T, order=1)

    truth = values(scan.image, points)
    moved = np.linalg.norm(subject["points"] - points, axis=1)
    assert moved.mean() > 2.0  # the map is not close to the identity
    at_subject = values(subject["image"], subject["points"])
    wrong_way = values(subject["image"], 2 * points - subject["points"])
    assert np.corrcoef(truth, at_subject)[0, 1] > 0.99
    assert np.corrcoef(truth, wrong_way)[0, 1] < 0.9
    assert np.corrcoef(truth, values(subject["image"], points))[0, 1] < 0.9
    inside = values(subject["mask"].astype(np.float32), subject["points"]) > 0.5
    assert inside.mean() > 0.95
    again = bench_recipe.make_subject(scan, points, seed=1000)
    other = bench_recipe.make_subject(scan, points, seed=1001)
    assert np.array_equal(again["image"], subject["image"])
    assert np.linalg.norm(other["points"] - subject["points"], axis=1).mean() > 1.0
