"""Small result folders shared by test_warp_cli.py, test_eval.py and test_quicklook.py.

Each builder runs once per test process (cached) in its own temporary folder, removed at exit.

* :func:`lung_result`: ``nephi.register.register`` on a 32^3 synthetic lung pair at 8 mm with a
  tiny config (20 IO steps, 1024 points, 128 GradICON points, 64 hidden units), mask and
  landmarks given, ``output.qc`` on. Its displacements are small (a few mm).
* :func:`truth_result`: a result folder in nephi's layout holding the synthetic pair's TRUE
  motion (``warp.nii.gz`` = F - Id on the fixed grid, ``inverse_warp.nii.gz`` = F^-1 - Id on an
  oblique moving grid, exact Jacobian), so displacements are large (about 15 mm) and exactly
  invertible: a strong test of warping and point mapping.
* :func:`tc_result`: ``register`` on a 2-D Triangles-and-Circles pair (48 x 48), qc on.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

import nibabel as nib
import numpy as np
import torch

from nephi.data.synthetic_lung import make_lung_pair, voxel_centres
from nephi.data.triangles_circles import make_tc_pair, save_tc_pair_nifti
from nephi.config.loader import load_defaults, set_dotted
from nephi.io.fields import save_scalar, write_displacement_field
from nephi.io.images import load_image, save_image
from nephi.pipeline.pairwise import LoadedPair, register
from nephi.results.warp import warp_image
from nephi.transforms.displacement import Field


def _tmp(prefix: str) -> str:
    root = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, root, True)
    return root


def tiny_config(**extra) -> dict:
    cfg = load_defaults("pairwise")
    settings = {"optim.steps": 20, "optim.points": 1024, "optim.reg_points": 128,
                "model.hidden": 64, "device": "cpu", "seed": 0, "output.qc": True, **extra}
    for key, value in settings.items():
        cfg = set_dotted(cfg, key, value)
    return cfg


def _register(pair: LoadedPair, out: str, cfg: dict) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problem: the thread pool costs more than it gives
    try:
        return register(pair, out, cfg, command=["pytest"], progress=False)
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def lung_result() -> dict:
    root = _tmp("nephi_lung_result_")
    paths = make_lung_pair(shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0)).save(
        os.path.join(root, "data"))
    out = os.path.join(root, "result")
    pair = LoadedPair(paths["exhale"], paths["inhale"], paths["inhale_mask"],
                      paths["inhale_points"], paths["exhale_points"])
    summary = _register(pair, out, tiny_config())
    return {"root": root, "paths": paths, "out": out, "summary": summary}


def _oblique_affine(shape, spacing, degrees) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


@functools.lru_cache(maxsize=None)
def truth_result() -> dict:
    root = _tmp("nephi_truth_result_")
    moving_shape = (30, 34, 32)
    moving_affine = _oblique_affine(moving_shape, (8.5, 7.5, 8.0), 10.0)
    lung = make_lung_pair(shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0), motion_mm=18.0,
                          exhale_shape=moving_shape, exhale_affine=moving_affine, seed=3)
    paths = lung.save(os.path.join(root, "data"))
    fixed = load_image(paths["inhale"])
    moving = load_image(paths["exhale"])
    out = os.path.join(root, "result")
    os.makedirs(out)
    forward = lung.displacement_field().astype(np.float64)
    y = voxel_centres(moving_shape, moving_affine)
    backward = (lung.motion.inverse(y) - y).reshape(*moving_shape, 3)
    write_displacement_field(os.path.join(out, "warp.nii.gz"), forward, fixed.grid)
    write_displacement_field(os.path.join(out, "inverse_warp.nii.gz"), backward, moving.grid)
    x = voxel_centres(fixed.grid.shape, fixed.grid.nifti_affine)
    save_scalar(os.path.join(out, "jacobian.nii.gz"),
                lung.motion.jacobian_det(x).reshape(fixed.grid.shape), fixed.grid)
    field = Field(forward, fixed.grid, os.path.join(out, "warp.nii.gz"))
    save_image(os.path.join(out, "warped.nii.gz"), warp_image(moving, field), fixed.grid)
    summary = {"moving": paths["exhale"], "fixed": paths["inhale"],
               "mask": paths["inhale_mask"], "landmarks": paths["inhale_points"],
               "moving_landmarks": paths["exhale_points"]}
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh)
    return {"root": root, "paths": paths, "out": out, "lung": lung, "fixed_grid": fixed.grid,
            "moving_grid": moving.grid}


@functools.lru_cache(maxsize=None)
def tc_result() -> dict:
    root = _tmp("nephi_tc_result_")
    paths = save_tc_pair_nifti(make_tc_pair(48, "solid", rng=1), os.path.join(root, "data"))
    out = os.path.join(root, "result")
    pair = LoadedPair(paths["moving"], paths["fixed"])
    summary = _register(pair, out, tiny_config())
    return {"root": root, "paths": paths, "out": out, "summary": summary}


def nifti_array(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel() - np.mean(a)
    b = np.asarray(b, dtype=np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def run_main(main, args, capsys) -> tuple:
    """Run an entry point's ``main`` on ``args`` (stringified); (status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(main, args, capsys, *words) -> None:
    """``main(args)`` fails with status 2 and one stderr line containing every word."""
    code, _, err = run_main(main, args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
