"""nephi-warp (apply a result to other images) and nephi-points (map point sets)."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from helpers_results import assert_input_error, ncc, nifti_array, run_main
from nephi.cli.points import main as points_main
from nephi.cli.warp import main as warp_main
from nephi.geometry.grid import lps_to_ras, ras_to_lps
from nephi.io.images import load_image
from nephi.io.points import load_points, save_ants_points, save_points
from nephi.transforms.displacement import map_points
from nephi.results.warp import mapped_index, warp_image
from nephi.results.result import Result
from nephi.io.images import grid_of

try:
    import SimpleITK as sitk
except ImportError:  # pragma: no cover - depends on the environment
    sitk = None




def warp(capsys, result, image, out, *extra):
    code, _, err = run_main(warp_main, ["--result", result, "--image", image, "--out", out, *extra],
                       capsys)
    assert code == 0, err
    return nifti_array(out)


# ----------------------------------------------------------------------------- images
def test_warp_reproduces_warped_nii(lung, tmp_path, capsys):
    out = warp(capsys, lung["out"], lung["paths"]["exhale"], tmp_path / "w.nii.gz")
    ref = nifti_array(os.path.join(lung["out"], "warped.nii.gz"))
    fixed = nifti_array(lung["paths"]["inhale"])
    foreground = fixed > -500.0
    assert foreground.mean() > 0.1
    assert ncc(out[foreground], ref[foreground]) >= 0.999
    assert np.abs(out - ref).max() < 1.0  # HU, on values spanning about 1400 HU
    assert grid_of(str(tmp_path / "w.nii.gz")).same_as(
        grid_of(os.path.join(lung["out"], "warped.nii.gz")))


def test_integer_intensities_keep_their_type(truth, tmp_path, capsys):
    img = nib.load(truth["paths"]["exhale"])
    as_int = nib.Nifti1Image(np.round(np.asarray(img.dataobj)).astype(np.int16), img.affine)
    nib.save(as_int, tmp_path / "moving_i16.nii.gz")
    for interp in ("linear", "cubic"):
        out = tmp_path / f"w_{interp}.nii.gz"
        warp(capsys, truth["out"], tmp_path / "moving_i16.nii.gz", out, "--interp", interp)
        assert nib.load(out).get_data_dtype() == np.int16
    a = nifti_array(tmp_path / "w_linear.nii.gz").astype(float)
    b = nifti_array(tmp_path / "w_cubic.nii.gz").astype(float)
    assert ncc(a, b) > 0.98


def test_cubic_reproduces_a_quadratic_better_than_linear(truth, tmp_path, capsys):
    """A cubic B-spline reproduces polynomials of degree <= 3 away from the border (the mirror
    boundary's error decays by about 0.27 per voxel inwards); linear interpolation does not.
    Sampled at x + d(x) in physical space."""
    grid = truth["moving_grid"]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    ras = grid.index_to_ras_points(idx.reshape(-1, 3).astype(float))

    def quadratic(p):
        return 1e-3 * (p[:, 0] ** 2 + 0.5 * p[:, 1] * p[:, 2])

    nib.save(nib.Nifti1Image(quadratic(ras).reshape(grid.shape).astype(np.float32),
                             grid.nifti_affine), tmp_path / "quad.nii.gz")
    fixed_grid = truth["fixed_grid"]
    result = Result.load(truth["out"])
    index = mapped_index(result.field(), fixed_grid, grid).astype(np.float64)
    interior = np.all((index > 6) & (index < np.asarray(grid.shape) - 7), axis=1)
    assert interior.mean() > 0.15
    expected = quadratic(grid.index_to_ras_points(index[interior]))
    errors = {}
    for interp in ("linear", "cubic"):
        out = warp(capsys, truth["out"], tmp_path / "quad.nii.gz", tmp_path / f"{interp}.nii.gz",
                   "--interp", interp)
        errors[interp] = np.abs(out.reshape(-1)[interior] - expected).max()
    assert errors["cubic"] < 5e-4, errors
    assert errors["linear"] > 20 * errors["cubic"], errors


def multi_label_map(truth, path):
    """int16 labels on the moving grid: 0 outside the body, 3 body, 7 left lung, 12 right."""
    img = nib.load(truth["paths"]["exhale"])
    hu = np.asarray(img.dataobj)
    lungs = np.asarray(nib.load(truth["paths"]["exhale_mask"]).dataobj) > 0
    grid = truth["moving_grid"]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    x = grid.index_to_ras_points(idx.reshape(-1, 3).astype(float))[:, 0].reshape(grid.shape)
    labels = np.where(hu > -500, 3, 0)
    labels = np.where(lungs & (x < 0), 7, labels)
    labels = np.where(lungs & (x >= 0), 12, labels).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, img.affine), path)
    return labels


def test_label_maps_keep_labels_and_integer_type(truth, tmp_path, capsys):
    labels = multi_label_map(truth, tmp_path / "labels.nii.gz")
    outs = {}
    for interp in ("label", "nearest"):
        out = tmp_path / f"{interp}.nii.gz"
        outs[interp] = warp(capsys, truth["out"], tmp_path / "labels.nii.gz", out,
                            "--interp", interp)
        assert nib.load(out).get_data_dtype() == np.int16
        assert set(np.unique(outs[interp])) == set(np.unique(labels)) == {0, 3, 7, 12}
    agree = np.mean(outs["label"] == outs["nearest"])
    assert 0.9 < agree < 1.0, agree  # mostly equal, different on some boundaries
    # the true motion carries the moving lungs onto the fixed lungs
    fixed_lungs = nifti_array(truth["paths"]["inhale_mask"]) > 0
    warped_lungs = np.isin(outs["label"], (7, 12))
    dice = 2 * np.sum(fixed_lungs & warped_lungs) / (fixed_lungs.sum() + warped_lungs.sum())
    assert dice > 0.9


@pytest.mark.skipif(sitk is None, reason="SimpleITK is not installed (pip install 'nephi[test]')")
def test_reference_grid_matches_simpleitk(truth, tmp_path, capsys):
    """Output on another grid (oblique, other spacing, partly outside the warp's grid):
    compared with SimpleITK resampling through warp.nii.gz."""
    a = np.deg2rad(-15.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0],
                               [-np.sin(a), 0, np.cos(a)]]) @ np.diag([6.0, 7.0, 9.0])
    shape = (40, 36, 30)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + [10.0, -5.0, 20.0]
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), ref)
    out = warp(capsys, truth["out"], truth["paths"]["exhale"], tmp_path / "w.nii.gz",
               "--reference", ref)
    ref_grid = grid_of(str(ref))
    assert out.shape == shape and grid_of(str(tmp_path / "w.nii.gz")).same_as(ref_grid)

    field = sitk.ReadImage(os.path.join(truth["out"], "warp.nii.gz"))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    theirs = sitk.Resample(sitk.ReadImage(truth["paths"]["exhale"]), sitk.ReadImage(str(ref)),
                           transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    theirs = sitk.GetArrayFromImage(theirs).transpose()
    result = Result.load(truth["out"])
    index = mapped_index(result.field(), ref_grid, truth["moving_grid"])
    in_moving = np.all((index >= 0) & (index <= np.asarray(truth["moving_grid"].shape) - 1),
                       axis=1).reshape(shape)
    voxels = ref_grid.index_to_ras_points(np.argwhere(np.ones(shape, bool)).astype(float))
    in_field = result.fixed_grid.ras_to_index_points(voxels)
    limit = np.asarray(result.fixed_grid.shape) - 1.0
    inside_field = np.all((in_field >= 0) & (in_field <= limit), axis=1).reshape(shape)
    far_outside = ~np.all((in_field >= -1) & (in_field <= limit + 1), axis=1).reshape(shape)
    assert far_outside.mean() > 0.05, "the reference grid should stick out of the warp's grid"
    # inside the warp's grid: the same values as ITK
    compare = in_moving & inside_field
    assert compare.mean() > 0.3
    assert ncc(out[compare], theirs[compare]) >= 0.999
    assert np.abs(out[compare] - theirs[compare]).max() < 0.1
    # beyond the warp's grid the displacement is zero: the moving image seen with the identity
    identity = warp_image(load_image(truth["paths"]["exhale"]), None, ref_grid)
    np.testing.assert_allclose(out[far_outside], identity[far_outside], atol=1e-3)
    both = far_outside & in_moving  # within the moving voxel-centre hull: border rules agree
    assert both.sum() > 100
    np.testing.assert_allclose(theirs[both], identity[both], atol=0.1)


def test_inverse_brings_the_warped_image_back(truth, tmp_path, capsys):
    """forward then --inverse restores the moving image; --inverse alone carries the fixed image
    into moving space. Both far better than the fixed image seen without the motion."""
    forward = tmp_path / "forward.nii.gz"
    back = tmp_path / "back.nii.gz"
    warp(capsys, truth["out"], truth["paths"]["exhale"], forward)
    restored = warp(capsys, truth["out"], forward, back, "--inverse")
    assert grid_of(str(back)).same_as(truth["moving_grid"])
    fixed_in_moving = warp(capsys, truth["out"], truth["paths"]["inhale"],
                           tmp_path / "fixed_in_moving.nii.gz", "--inverse")
    without_motion = warp_image(load_image(truth["paths"]["inhale"]), None, truth["moving_grid"])
    moving = nifti_array(truth["paths"]["exhale"])
    body = moving > -500.0
    baseline = ncc(without_motion[body], moving[body])
    assert ncc(restored[body], moving[body]) > max(0.9, baseline + 0.2)
    assert ncc(fixed_in_moving[body], moving[body]) > max(0.9, baseline + 0.2)


# ----------------------------------------------------------------------------- points
def test_points_fixed_to_moving_equals_landmarks_moving_csv(lung, tmp_path, capsys):
    out = tmp_path / "mapped.csv"
    code, stdout, err = run_main(points_main, ["--result", lung["out"], "--points",
                                          lung["paths"]["inhale_points"], "--out", out], capsys)
    assert code == 0, err
    assert "300 points fixed-to-moving" in stdout
    assert out.read_text(encoding="utf-8") == open(os.path.join(lung["out"], "landmarks_moving.csv"), encoding="utf-8").read()


def test_points_round_trip_within_inverse_consistency(lung, tmp_path, capsys):
    mapped, back = tmp_path / "mapped.csv", tmp_path / "back.csv"
    fixed_pts = lung["paths"]["inhale_points"]
    for src, dst, direction in ((fixed_pts, mapped, "fixed-to-moving"),
                                (mapped, back, "moving-to-fixed")):
        code, _, err = run_main(points_main, ["--result", lung["out"], "--points", src, "--out", dst,
                                         "--direction", direction], capsys)
        assert code == 0, err
    err = np.linalg.norm(load_points(str(back), 3) - load_points(fixed_pts, 3), axis=1)
    bound = 2.0 * lung["summary"]["inverse_consistency_mm_p95"] + 0.1
    assert np.percentile(err, 95) < bound
    moved = np.linalg.norm(load_points(str(mapped), 3) - load_points(fixed_pts, 3), axis=1)
    assert moved.mean() > 3 * np.mean(err), "the round trip must undo a real displacement"


def test_points_with_true_motion_and_lps(truth, tmp_path, capsys):
    lung = truth["lung"]
    lps_in = tmp_path / "fixed_lps.csv"
    save_points(str(lps_in), ras_to_lps(lung.inhale_points))
    lps_out = tmp_path / "moving_lps.csv"
    code, _, err = run_main(points_main, ["--result", truth["out"], "--points", lps_in, "--out",
                                     lps_out, "--lps"], capsys)
    assert code == 0, err
    mapped_ras = load_points(str(lps_out), 3)  # --lps writes the ANTs CSV (x,y,z,t): read as RAS
    result = Result.load(truth["out"])
    direct = map_points(lung.inhale_points, result.field().disp, result.fixed_grid)
    np.testing.assert_allclose(mapped_ras, direct, atol=1e-3)
    # the true motion, interpolated from an 8 mm grid: close to the exact exhale points
    assert np.linalg.norm(mapped_ras - lung.exhale_points, axis=1).mean() < 0.5
    assert np.linalg.norm(lung.inhale_points - lung.exhale_points, axis=1).mean() > 8.0


def test_points_slicer_and_ants_files_match_the_csv_route(truth, tmp_path, capsys):
    def run(src, dst, *extra):
        code, _, err = run_main(points_main, ["--result", truth["out"], "--points", src,
                                              "--out", dst, *extra], capsys)
        assert code == 0, err

    inhale = truth["lung"].inhale_points
    save_points(str(tmp_path / "fixed.csv"), inhale)
    run(tmp_path / "fixed.csv", tmp_path / "moving.csv")
    csv_route = load_points(str(tmp_path / "moving.csv"), 3)
    # 3D Slicer markups JSON in and out (written in LPS, read back as RAS)
    save_points(str(tmp_path / "fixed.mrk.json"), inhale)
    run(tmp_path / "fixed.mrk.json", tmp_path / "moving.mrk.json")
    assert '"coordinateSystem": "LPS"' in (tmp_path / "moving.mrk.json").read_text(encoding="utf-8")
    np.testing.assert_allclose(load_points(str(tmp_path / "moving.mrk.json"), 3), csv_route,
                               atol=1e-3)
    # --lps with a .csv output: the ANTs point CSV, LPS columns x,y,z then t = 0
    run(tmp_path / "fixed.mrk.json", tmp_path / "moving_ants.csv", "--lps")
    text = (tmp_path / "moving_ants.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "x,y,z,t,label,comment"
    raw = np.loadtxt(tmp_path / "moving_ants.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(lps_to_ras(raw[:, :3]), csv_route, atol=1e-3)
    assert np.all(raw[:, 3] == 0.0)
    np.testing.assert_allclose(load_points(str(tmp_path / "moving_ants.csv"), 3), csv_route,
                               atol=1e-3)
    # an ANTs CSV input under --lps is not flipped twice; a .fcsv output
    save_ants_points(str(tmp_path / "fixed_ants.csv"), inhale)
    run(tmp_path / "fixed_ants.csv", tmp_path / "moving.fcsv", "--lps")
    np.testing.assert_allclose(load_points(str(tmp_path / "moving.fcsv"), 3), csv_route,
                               atol=1e-3)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_one_line_exit_2(lung, truth, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    image = lung["paths"]["exhale"]
    assert_input_error(warp_main, ["--result", tmp_path / "nope", "--image", image, "--out", out],
                       capsys, "nope", "not found")
    broken = tmp_path / "broken"
    shutil.copytree(lung["out"], broken)
    os.remove(broken / "inverse_warp.nii.gz")
    assert_input_error(warp_main, ["--result", broken, "--image", image, "--out", out,
                                   "--inverse"], capsys, "inverse_warp.nii.gz", "missing")
    assert_input_error(points_main, ["--result", broken, "--points",
                                     lung["paths"]["inhale_points"], "--out", tmp_path / "p.csv",
                                     "--direction", "moving-to-fixed"], capsys,
                       "inverse_warp.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), flat)
    assert_input_error(warp_main, ["--result", lung["out"], "--image", flat, "--out", out],
                       capsys, "2-D", "3-D")
    assert_input_error(warp_main, ["--result", lung["out"], "--image", image, "--out",
                                   tmp_path / "x.png"], capsys, ".nii")
    assert_input_error(warp_main, ["--result", lung["out"], "--image", image, "--out", out,
                                   "--interp", "spline"], capsys, "--interp")
    assert_input_error(warp_main, ["--result", lung["out"], "--image", image, "--out", out,
                                   "--reference", flat], capsys, "--reference", "2-D")
    assert_input_error(points_main, ["--result", lung["out"], "--points", tmp_path / "no.csv",
                                     "--out", tmp_path / "p.csv"], capsys, "no.csv")
    assert not out.exists() and not (tmp_path / "p.csv").exists()
