"""Tests for the 2-D Triangles-and-Circles synthetic dataset (size 64, fast)."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from nephi.cli.prep import add_command, command_main
from nephi.data.triangles_circles import (make_tc_dataset, make_tc_pair, make_tc_shape,
                                          save_tc_pair_nifti)
from nephi.results.metrics import foreground_dice as dice


S = 64
MODES = ("solid", "hollow")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _images(pair):
    """Yield ``(image, label, params)`` for the moving and fixed images."""
    for key in ("moving", "fixed"):
        yield pair[key], pair[key + "_label"], pair[key + "_params"]


def _disk_iou(label):
    """IoU between the filled label mask and the equal-area disk centred at its
    centre of mass: close to 1 for circles, about 0.7 or less for triangles."""
    mask = ndimage.binary_fill_holes(label > 0)
    ci, cj = ndimage.center_of_mass(mask)
    radius = np.sqrt(mask.sum() / np.pi)
    ii, jj = np.indices(mask.shape)
    disk = np.hypot(ii - ci, jj - cj) <= radius
    return (disk & mask).sum() / (disk | mask).sum()


@pytest.fixture(scope="module", params=MODES)
def pairs(request):
    rng = np.random.default_rng(123)
    return request.param, [make_tc_pair(S, request.param, rng) for _ in range(40)]


def test_types_shapes_and_range(pairs):
    _, ps = pairs
    for p in ps:
        assert p["shape"] in ("circle", "triangle")
        for image, label, _ in _images(p):
            assert image.shape == (S, S) and image.dtype == np.float32
            assert label.shape == (S, S) and label.dtype == np.uint8
            assert image.min() >= 0.0 and image.max() <= 1.0
            assert image.max() == 1.0 and image.min() == 0.0
            assert set(np.unique(label)) <= {0, 1}


def test_label_area_matches_bright_area(pairs):
    mode, ps = pairs
    counts, exact = [], []
    for p in ps:
        for image, label, params in _images(p):
            area = label.sum()
            assert abs((image > 0.5).sum() - area) <= 0.03 * area
            # the anti-aliased intensity integrates to the exact region area
            assert image.sum() == pytest.approx(params["label_area"], rel=0.03)
            # pixel counts of thin hollow bands are noisier than the integral
            tol = 0.1 if mode == "solid" else 0.25
            assert area == pytest.approx(params["label_area"], rel=tol)
            counts.append(area)
            exact.append(params["label_area"])
    assert np.sum(counts) == pytest.approx(np.sum(exact), rel=0.02)


def test_centre_dark_when_hollow_bright_when_solid(pairs):
    mode, ps = pairs
    for p in ps:
        for image, label, params in _images(p):
            i, j = np.rint(params["center"]).astype(int)
            if mode == "solid":
                assert image[i, j] == 1.0 and label[i, j] == 1
            else:
                assert image[i, j] < 0.1 and label[i, j] == 0
                # the hole is enclosed by the bright band
                filled = ndimage.binary_fill_holes(label)
                assert filled[i, j]
                assert filled.sum() > 1.3 * label.sum()


def test_shapes_inside_image_with_margin(pairs):
    _, ps = pairs
    for p in ps:
        for image, label, _ in _images(p):
            assert image[:2].max() == 0 and image[-2:].max() == 0
            assert image[:, :2].max() == 0 and image[:, -2:].max() == 0
            assert label.sum() > 0.005 * S * S


def test_pair_shares_shape_class(pairs):
    _, ps = pairs
    seen = set()
    for p in ps:
        seen.add(p["shape"])
        assert p["moving_params"]["shape"] == p["fixed_params"]["shape"] == p["shape"]
        for _, label, _ in _images(p):
            iou = _disk_iou(label)
            if p["shape"] == "circle":
                assert iou > 0.93
            else:
                assert iou < 0.8
    assert seen == {"circle", "triangle"}


def test_triangle_geometry():
    rng = np.random.default_rng(5)
    for _ in range(50):
        params = make_tc_shape("triangle", S, "solid", rng)["params"]
        assert params["angles_deg"].min() > 25.0
        assert params["angles_deg"].sum() == pytest.approx(180.0)
        assert 0.03 * S * S < params["area"] < 0.5 * S * S


def test_circle_radius_range():
    rng = np.random.default_rng(6)
    for _ in range(50):
        params = make_tc_shape("circle", S, "solid", rng)["params"]
        assert 0.10 * S <= params["radius"] <= 0.35 * S


def test_dataset_reproducible_by_seed():
    a = make_tc_dataset(6, S, "hollow", seed=3)
    b = make_tc_dataset(6, S, "hollow", seed=3)
    c = make_tc_dataset(6, S, "hollow", seed=4)
    for key in ("moving", "fixed", "moving_label", "fixed_label", "shape"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["moving"], c["moving"])
    assert a["moving"].shape == (6, S, S) and a["moving"].dtype == np.float32
    assert a["fixed_label"].shape == (6, S, S) and a["fixed_label"].dtype == np.uint8
    assert a["shape"].shape == (6,)
    pair = make_tc_pair(S, "solid", rng=11)
    again = make_tc_pair(S, "solid", rng=np.random.default_rng(11))
    np.testing.assert_array_equal(pair["moving"], again["moving"])
    np.testing.assert_array_equal(pair["fixed_label"], again["fixed_label"])


def test_moving_and_fixed_differ():
    data = make_tc_dataset(10, S, "solid", seed=0)
    for m, f in zip(data["moving"], data["fixed"]):
        assert not np.array_equal(m, f)


@pytest.mark.parametrize("mode, upper", [("solid", 0.7), ("hollow", 0.4)])
def test_initial_dice_well_below_one(mode, upper):
    data = make_tc_dataset(100, S, mode, seed=1)
    scores = [dice(m, f) for m, f in zip(data["moving_label"], data["fixed_label"])]
    mean = float(np.mean(scores))
    print(f"mean initial Dice ({mode}, size {S}, 100 pairs): {mean:.3f}")
    assert 0.02 < mean < upper
    assert max(scores) < 1.0


def test_dice_helper():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b[1:3] = 1
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a * 0, b * 0) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_tc_pair(S, "striped", rng=0)
    with pytest.raises(ValueError):
        make_tc_shape("square", S, "solid", rng=0)
    with pytest.raises(ValueError):
        make_tc_dataset(2, 8, "solid", seed=0)


def test_nifti_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    pair = make_tc_pair(S, "hollow", rng=7)
    paths = save_tc_pair_nifti(pair, tmp_path / "pair")
    for key in ("moving", "fixed", "moving_label", "fixed_label"):
        path = tmp_path / "pair" / f"{key}.nii.gz"
        assert paths[key] == str(path)
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        assert data.shape == (S, S)
        assert data.dtype == pair[key].dtype
        np.testing.assert_array_equal(data, pair[key])
        np.testing.assert_array_equal(img.affine, np.eye(4))
        assert img.header.get_zooms() == (1.0, 1.0)


def _check_output_dir(out, n):
    dirs = sorted(os.listdir(out))
    assert dirs == [f"pair_{k:04d}" for k in range(n)]
    for d in dirs:
        assert sorted(os.listdir(os.path.join(out, d))) == sorted(
            f"{k}.nii.gz" for k in ("moving", "fixed", "moving_label", "fixed_label"))


def test_subparser(tmp_path):
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"), "triangles_circles")
    out = tmp_path / "tc"
    args = parser.parse_args(["triangles-circles", "--n", "2", "--size", str(S),
                              "--mode", "solid", "--out", str(out), "--seed", "2"])
    assert args.func(args) == 0
    _check_output_dir(out, 2)


def test_main_and_module_entry_point(tmp_path):
    out = tmp_path / "main"
    assert command_main("triangles_circles", ["--n", "2", "--size", str(S), "--mode", "hollow", "--out", str(out)]) == 0
    _check_output_dir(out, 2)
    out = tmp_path / "module"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.triangles_circles", "--n", "4", "--size", str(S),
         "--mode", "hollow", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_output_dir(out, 4)
