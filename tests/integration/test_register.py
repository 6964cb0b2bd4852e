"""Pairwise registration end to end: identity, a known translation, a synthetic lung pair."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers_interop import Phantom, centred_grid, save_nifti
from nephi.config.loader import load_defaults, merge
from nephi.pipeline.pairwise import LoadedPair, register

pytestmark = pytest.mark.slow

SMALL = {
    "device": "cpu",
    "model": {"hidden": 128, "fourier_features": 32},
    "optim": {"steps": 60, "points": 1024, "reg_points": 256, "lr": 3e-4},
}


def small_config(**optim):
    cfg = merge(load_defaults("pairwise"), SMALL)
    return merge(cfg, {"optim": optim}) if optim else cfg


def write_pair(tmp_path, shift_mm, shape=(24, 24, 24), spacing=3.0):
    phantom = Phantom(3, extent_mm=25.0, count=16, seed=3)
    grid = centred_grid(shape, np.eye(3) * spacing, np.zeros(3))
    fixed = phantom.render(grid)
    # the moving anatomy at y is the fixed anatomy at y - shift: phi_AB(x) = x + shift
    moving = phantom.moved(np.eye(3), -np.asarray(shift_mm)).render(grid)
    save_nifti(tmp_path / "fixed.nii.gz", fixed, grid)
    save_nifti(tmp_path / "moving.nii.gz", moving, grid)
    return tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz"


def warp_lps(out):
    return nib.load(str(out / "warp.nii.gz")).get_fdata()[..., 0, :]


def test_identical_images_give_identity(tmp_path):
    moving, fixed = write_pair(tmp_path, [0.0, 0.0, 0.0])
    summary = register(LoadedPair(str(moving), str(fixed)), str(tmp_path / "out"),
                       small_config(steps=30), progress=False)
    disp = np.linalg.norm(warp_lps(tmp_path / "out"), axis=-1)
    assert disp.mean() < 0.1 * 3.0, disp.mean()
    assert summary["folding_percent"] == 0.0
    assert summary["ncc_after"] > 0.999


def test_known_translation_is_recovered(tmp_path):
    shift = np.array([5.0, -4.0, 3.0])
    moving, fixed = write_pair(tmp_path, shift)
    summary = register(LoadedPair(str(moving), str(fixed)), str(tmp_path / "out"),
                       small_config(), progress=False)
    disp_lps = warp_lps(tmp_path / "out")[6:18, 6:18, 6:18].reshape(-1, 3)
    expected_lps = shift * np.array([-1.0, -1.0, 1.0])
    err = np.linalg.norm(np.median(disp_lps, axis=0) - expected_lps)
    assert err < 0.6, (np.median(disp_lps, axis=0), expected_lps)
    assert summary["ncc_after"] > summary["ncc_before"] + 0.05
    assert summary["folding_percent"] == 0.0


def test_cli_lowers_landmark_error_on_synthetic_lung(tmp_path):
    from nephi.data.synthetic_lung import make_lung_pair

    pair = make_lung_pair(shape=(40, 40, 40), spacing=(6.4, 6.4, 6.4), motion_mm=15.0, seed=1)
    pair.save(str(tmp_path))
    cfg = tmp_path / "small.yaml"
    cfg.write_text("model: {hidden: 128, fourier_features: 32}\noptim: {lr: 3.0e-4}\n")
    out = tmp_path / "result"
    cmd = [sys.executable, "-m", "infer.main",
           "--pair", str(tmp_path / "exhale.nii.gz"), str(tmp_path / "inhale.nii.gz"),
           "--mask", str(tmp_path / "inhale_mask.nii.gz"),
           "--landmarks", str(tmp_path / "inhale_points.csv"),
           "--moving-landmarks", str(tmp_path / "exhale_points.csv"),
           "--out", str(out), "--io-steps", "100", "--points", "1024", "--reg-points", "256",
           "--config", str(cfg), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    before = summary["landmark_error_before_mm"]["mean_mm"]
    after = summary["landmark_error_after_mm"]["mean_mm"]
    assert before > 8.0
    assert after < 0.5 * before, (before, after)
    assert summary["folding_percent_in_mask"] == 0.0
    for name in ("warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "jacobian.nii.gz",
                 "landmarks_moving.csv"):
        assert (out / name).is_file()
    assert "landmark error" in proc.stdout
