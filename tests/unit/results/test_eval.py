"""nephi-eval: landmark errors equal the run's own summary, Dice, folding, inverse consistency,
reports, and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil

import nibabel as nib
import numpy as np

from helpers_results import assert_input_error as _assert_input_error, run_main
from nephi.cli.evaluate import main as eval_main
from nephi.cli.warp import main as warp_main
from nephi.results.evaluate import evaluate_result, landmark_metrics
from nephi.io.fields import write_displacement_field
from nephi.io.points import load_points
from nephi.transforms.displacement import map_points
SIGNATURE = b"\x89PNG\r\n\x1a\n"
from nephi.results.result import Result


def run_eval(args, capsys):
    return run_main(eval_main, args, capsys)


def read_rows(path) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_eval_reports_the_landmark_error_of_summary_json(lung, tmp_path, capsys):
    summary = lung["summary"]
    assert summary["landmarks"] == os.path.abspath(lung["paths"]["inhale_points"])
    code, out, err = run_eval([lung["out"], "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    row = read_rows(tmp_path / "report.csv")[0]
    after, before = summary["landmark_error_after_mm"], summary["landmark_error_before_mm"]
    assert before["mean_mm"] > after["mean_mm"] + 0.1, "the registration must move landmarks"
    for ours, theirs in (("landmark_mean_mm", after["mean_mm"]),
                         ("landmark_std_mm", after["std_mm"]),
                         ("landmark_p95_mm", after["p95_mm"]),
                         ("landmark_max_mm", after["max_mm"]),
                         ("landmark_before_mean_mm", before["mean_mm"]),
                         ("landmark_before_std_mm", before["std_mm"])):
        assert abs(float(row[ours]) - theirs) < 1e-6, (ours, row[ours], theirs)
    assert int(row["landmarks_n"]) == after["count"] == 300
    assert row["landmark_convention"] == "continuous"
    assert abs(float(row["folding_percent"]) - summary["folding_percent"]) < 1e-9
    assert f"{after['mean_mm']:.2f}" in out and "| result |" in out
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("| result |")
    # per-axis errors: mean |error| along x, y, z; their norm bounds the mean distance
    axes = np.array([float(row[f"landmark_abs_{a}_mm"]) for a in "xyz"])
    assert np.linalg.norm(axes) <= after["mean_mm"] + 1e-9 <= axes.sum() + 1e-9


def test_explicit_points_and_snap_to_voxel(lung, tmp_path, capsys):
    result = Result.load(lung["out"])
    fixed = load_points(lung["paths"]["inhale_points"], 3)
    moving = load_points(lung["paths"]["exhale_points"], 3)
    plain = landmark_metrics(result, fixed, moving)
    assert abs(plain["landmark_mean_mm"] - lung["summary"]["landmark_error_after_mm"]["mean_mm"]) \
        < 1e-6
    snapped = landmark_metrics(result, fixed, moving, snap_to_voxel=True)
    mapped = map_points(fixed, result.field().disp, result.fixed_grid)
    grid = result.moving_grid
    centres = grid.index_to_ras_points(np.floor(grid.ras_to_index_points(mapped) + 0.5))
    expected = np.linalg.norm(centres - moving, axis=1)
    assert abs(snapped["landmark_mean_mm"] - expected.mean()) < 1e-9
    assert snapped["landmark_mean_mm"] != plain["landmark_mean_mm"]
    assert snapped["landmark_before_mean_mm"] == plain["landmark_before_mean_mm"]
    code, _, err = run_eval([lung["out"], "--fixed-points", lung["paths"]["inhale_points"],
                             "--moving-points", lung["paths"]["exhale_points"], "--snap-to-voxel",
                             "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    row = read_rows(tmp_path / "r.csv")[0]
    assert row["landmark_convention"] == "snap-to-voxel"
    assert abs(float(row["landmark_mean_mm"]) - expected.mean()) < 1e-9


def test_dice_of_identical_labels_is_one(truth, tmp_path, capsys):
    """The fixed label map is the moving one warped with generic-label interpolation, so
    nephi-eval's own warping must reproduce it exactly: Dice 1 for every label."""
    mask = nib.load(truth["paths"]["exhale_mask"])
    hu = np.asarray(nib.load(truth["paths"]["exhale"]).dataobj)
    labels = np.where(hu > -500, 2, 0).astype(np.uint8)
    labels[np.asarray(mask.dataobj) > 0] = 5
    nib.save(nib.Nifti1Image(labels, mask.affine), tmp_path / "moving_labels.nii.gz")
    assert warp_main(["--result", truth["out"], "--image", str(tmp_path / "moving_labels.nii.gz"),
                      "--out", str(tmp_path / "fixed_labels.nii.gz"), "--interp", "label"]) == 0
    row = evaluate_result(Result.load(truth["out"]), fixed_labels=str(tmp_path / "fixed_labels.nii.gz"),
                          moving_labels=str(tmp_path / "moving_labels.nii.gz"))
    assert row["dice_2"] == 1.0 and row["dice_5"] == 1.0 and row["dice_mean"] == 1.0
    assert row["dice_before_mean"] < 0.97  # the true motion is large: without it, overlap drops
    # the true motion aligns the real lung masks well
    real = evaluate_result(Result.load(truth["out"]), fixed_labels=truth["paths"]["inhale_mask"],
                           moving_labels=truth["paths"]["exhale_mask"])
    assert real["dice_1"] > 0.9 and real["dice_1"] > real["dice_before_mean"] + 0.03


def test_folding_and_inverse_consistency_of_exported_fields(truth, tmp_path, capsys):
    row = evaluate_result(Result.load(truth["out"]))
    assert row["folding_percent"] == 0.0 and row["jacobian_min"] > 0.5
    assert row["inverse_consistency_inside_percent"] > 50.0
    assert row["inverse_consistency_mm_mean"] < 0.3  # exact inverse, up to interpolation
    # a wrong inverse (zero displacement) is caught: the error is the displacement itself
    broken = tmp_path / "broken"
    shutil.copytree(truth["out"], broken)
    result = Result.load(str(broken))
    write_displacement_field(str(broken / "inverse_warp.nii.gz"),
                             np.zeros_like(result.field(inverse=True).disp), result.moving_grid)
    bad = evaluate_result(Result.load(str(broken)))
    assert bad["inverse_consistency_mm_mean"] > 5.0
    # folds in jacobian.nii.gz are counted
    jac = nib.load(broken / "jacobian.nii.gz")
    data = np.asarray(jac.dataobj).copy()
    data[:4, :4, :4] = -0.5
    nib.save(nib.Nifti1Image(data, jac.affine), broken / "jacobian.nii.gz")
    folded = evaluate_result(Result.load(str(broken)))
    assert folded["folding_voxels"] == 64
    assert abs(folded["folding_percent"] - 100.0 * 64 / data.size) < 1e-12


def test_many_results_and_qc(lung, truth, tmp_path, capsys):
    copy = tmp_path / "truth_copy"
    shutil.copytree(truth["out"], copy)
    code, out, err = run_eval([lung["out"], copy, "--out", tmp_path / "sub" / "both", "--qc"],
                              capsys)
    assert code == 0, err
    rows = read_rows(tmp_path / "sub" / "both.csv")
    assert [r["name"] for r in rows] == ["result", "truth_copy"]
    assert len((tmp_path / "sub" / "both.md").read_text(encoding="utf-8").strip().splitlines()) >= 4
    png = copy / "qc_overview.png"
    assert png.read_bytes()[:8] == SIGNATURE
    assert "qc_overview.png" in out


def test_summary_records_inputs(lung):
    with open(os.path.join(lung["out"], "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["mask"] == os.path.abspath(lung["paths"]["inhale_mask"])
    assert summary["moving_landmarks"] == os.path.abspath(lung["paths"]["exhale_points"])


def assert_input_error(args, capsys, *words):
    _assert_input_error(eval_main, args, capsys, *words)


def test_bad_inputs_one_line_exit_2(lung, tmp_path, capsys):
    out = tmp_path / "report"
    assert_input_error([tmp_path / "missing", "--out", out], capsys, "missing", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_input_error([empty, "--out", out], capsys, "nephi-infer")
    broken = tmp_path / "broken"
    shutil.copytree(lung["out"], broken)
    os.remove(broken / "jacobian.nii.gz")
    assert_input_error([broken, "--out", out], capsys, "jacobian.nii.gz", "missing")
    assert_input_error([lung["out"], "--fixed-points", lung["paths"]["inhale_points"],
                        "--out", out], capsys, "--moving-points")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.uint8), np.eye(4)), flat)
    assert_input_error([lung["out"], "--fixed-labels", flat, "--moving-labels", flat,
                        "--out", out], capsys, "2-D", "3-D")
    assert not (tmp_path / "report.csv").exists()
