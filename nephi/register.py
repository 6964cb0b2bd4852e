"""Register one pair end to end: validate inputs, optimize, evaluate densely, write outputs.

A = moving, B = fixed. ``phi_AB`` maps fixed points to moving points; the warped image is the
moving image pulled back onto the fixed grid. Output files (exact names):

* ``warped.nii.gz``         moving resampled onto the fixed grid
* ``warp.nii.gz``           phi_AB - Id on the fixed grid, ITK displacement field (LPS mm)
* ``inverse_warp.nii.gz``   phi_BA - Id on the moving grid, same format
* ``transform.h5``          warp.nii.gz as an ITK HDF5 DisplacementFieldTransform
* ``inverse_transform.h5``  inverse_warp.nii.gz as an ITK HDF5 DisplacementFieldTransform
* ``jacobian.nii.gz``       det of the Jacobian of phi_AB on the fixed grid
* ``summary.json``          metrics, timings, command line and the resolved configuration
* ``landmarks_moving.csv``  (with ``landmarks``) fixed-space points mapped into moving space
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch

from . import __version__
from .config import require_positive
from .dense import dense_fields
from .derivatives import NEPHI_METHODS
from .errors import NephiInputError
from .export import save_scalar, write_displacement_field
from .itk_transform import write_displacement_h5
from .imageio import Image, load_image, load_mask, load_points, save_image, save_points
from .intensity import normalize
from .landmarks import landmark_errors, map_points
from .losses import ncc
from .io_modes import validate_io_config
from .optimize import instance_optimize
from .outputs import AtomicDir, check_output_dir
from .pair import PairTensors
from .sampling import sample_image
from .geometry import apply_affine_torch

OPTION_NAMES = {
    "optim.steps": "--io-steps",
    "optim.points": "--points",
    "optim.reg_points": "--reg-points",
    "optim.lr": "--lr",
    "optim.latent_lr": "config key optim.latent_lr",
}


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NephiInputError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise NephiInputError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def validate_config(cfg: dict) -> None:
    """Check the resolved pairwise config; NephiInputError names the option or key.

    ``optim``/``loss`` (the nephi mode's settings) are always checked; the ``io`` section and
    the active mode's section by :func:`nephi.io_modes.validate_io_config`.
    """
    validate_io_config(cfg)
    names = OPTION_NAMES if cfg["io"]["mode"] == "nephi" else {}
    require_positive(cfg, ["optim.points", "optim.reg_points", "latent.sigma", "output.chunk",
                           "loss.fd_eps"], names)
    require_positive(cfg, ["optim.lr", "optim.latent_lr"], names, allow_null=True)
    steps = cfg["optim"]["steps"]
    if not isinstance(steps, int) or steps < 0:
        name = names.get("optim.steps", "config key optim.steps")
        raise NephiInputError(f"{name}: must be a non-negative integer, got {steps!r}")
    if cfg["loss"]["jacobian"] not in NEPHI_METHODS:
        raise NephiInputError(f"config key loss.jacobian: {cfg['loss']['jacobian']!r} is not one "
                              f"of {', '.join(NEPHI_METHODS)}")
    for key in ("lambda_reg", "lambda_prior"):
        if cfg["loss"][key] < 0:
            raise NephiInputError(f"config key loss.{key}: must be >= 0")


class LoadedPair:
    """Validated inputs of one registration."""

    def __init__(self, moving_path: str, fixed_path: str, mask_path: str | None = None,
                 landmarks_path: str | None = None, moving_landmarks_path: str | None = None):
        self.moving = load_image(moving_path, what="moving image")
        self.fixed = load_image(fixed_path, what="fixed image")
        self.mask_path = os.path.abspath(mask_path) if mask_path else None
        self.landmarks_path = os.path.abspath(landmarks_path) if landmarks_path else None
        self.moving_landmarks_path = (os.path.abspath(moving_landmarks_path)
                                      if moving_landmarks_path else None)
        if self.moving.ndim != self.fixed.ndim:
            raise NephiInputError(f"moving image {moving_path} is {self.moving.ndim}-D but fixed "
                                  f"image {fixed_path} is {self.fixed.ndim}-D")
        self.mask = load_mask(mask_path, self.fixed.grid, what="mask") if mask_path else None
        d = self.fixed.ndim
        self.landmarks = load_points(landmarks_path, d, "landmarks") if landmarks_path else None
        self.moving_landmarks = None
        if moving_landmarks_path:
            if self.landmarks is None:
                raise NephiInputError("--moving-landmarks needs --landmarks (the fixed points)")
            self.moving_landmarks = load_points(moving_landmarks_path, d, "moving landmarks")
            if len(self.moving_landmarks) != len(self.landmarks):
                raise NephiInputError(
                    f"moving landmarks {moving_landmarks_path}: {len(self.moving_landmarks)} "
                    f"points but landmarks has {len(self.landmarks)}")


def pair_tensors(pair: LoadedPair, cfg: dict, device) -> PairTensors:
    """Normalized intensities of both images as (1, 1, *S) tensors on ``device``."""
    icfg = cfg["intensity"]

    def prep(img: Image):
        arr = normalize(img.data, icfg["method"], icfg["low"], icfg["high"], icfg["window"])
        return torch.as_tensor(arr, device=device).reshape(1, 1, *img.grid.shape)

    mask = None
    if pair.mask is not None:
        mask = torch.as_tensor(pair.mask, device=device).unsqueeze(0)
    return PairTensors(prep(pair.fixed), prep(pair.moving), pair.fixed.grid, pair.moving.grid, mask)


def ncc_in(a: np.ndarray, b: np.ndarray, region: np.ndarray | None) -> float:
    if region is not None:
        a, b = a[region], b[region]
    return float(ncc(torch.as_tensor(a, dtype=torch.float64).reshape(1, -1),
                     torch.as_tensor(b, dtype=torch.float64).reshape(1, -1))[0])


def identity_resample(pair: LoadedPair) -> np.ndarray:
    """The moving image on the fixed grid under the identity transform (physical space)."""
    fixed_grid, moving_grid = pair.fixed.grid, pair.moving.grid
    x = fixed_grid.normalized_points().reshape(1, -1, fixed_grid.ndim).double()
    pts = apply_affine_torch(fixed_grid.frame_to(moving_grid), x)
    vol = torch.as_tensor(pair.moving.data, dtype=torch.float64).reshape(1, 1, *moving_grid.shape)
    return sample_image(vol, pts, padding="zeros")[0, 0].reshape(fixed_grid.shape).numpy()


def framed_maps(phi_ab, phi_ba, frame_to_net=None) -> tuple:
    """Point maps of the IO frame as point maps of the fixed image's frame, (1, n, d) -> (1, n, d).

    ``phi_ab``, ``phi_ba``: the maps IO returned, in the frame it optimized in. With
    ``frame_to_net`` (homogeneous matrix, fixed frame -> network frame) that frame is the
    network grid's: phi(x) = N^-1 phi_net(N x). Without it the maps are returned unchanged.
    """
    if frame_to_net is None:
        return phi_ab, phi_ba
    net_to_frame = np.linalg.inv(frame_to_net)

    def wrap(net_map):
        return lambda x: apply_affine_torch(net_to_frame,
                                            net_map(apply_affine_torch(frame_to_net, x)))

    return wrap(phi_ab), wrap(phi_ba)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def register(pair: LoadedPair, out_dir: str, cfg: dict, command: list | None = None,
             progress: bool = True, init: tuple | None = None, io_params: str = "all",
             extra_summary: dict | None = None, network_view: tuple | None = None) -> dict:
    """Register ``pair`` with the IO mode ``cfg['io']['mode']``, write the result folder; returns
    the summary dict.

    Every mode goes the same way: :func:`nephi.optimize.instance_optimize` returns the point maps
    (phi_AB, phi_BA) of the frame it optimized in, :func:`framed_maps` brings them to the fixed
    image's frame, and dense export, metrics and files are the same for every mode.
    ``init``: optional (fields, latent) to start from (e.g. a network's prediction); they are
    copied, never changed. Without it the maps start at the identity (``nephi``: fresh fields).
    ``network_view``: optional (tensors, frame_to_net): the pair as a trained network sees it
    (:class:`PairTensors` on the network's grid) and the homogeneous matrix from the fixed
    image's frame to that grid's frame. The fields then live in the network's frame; IO runs
    there and outputs are still written on the original fixed and moving grids.
    """
    validate_config(cfg)
    check_output_dir(out_dir)
    t0 = time.perf_counter()
    device = select_device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if network_view is None:
        tensors, frame_to_net = pair_tensors(pair, cfg, device), None
    else:
        tensors, frame_to_net = network_view
    io = instance_optimize(tensors, cfg, init=init, io_params=io_params, progress=progress)
    phi_ab, phi_ba = framed_maps(io.phi_ab, io.phi_ba, frame_to_net)

    t_dense = time.perf_counter()
    dense = dense_fields(phi_ab, phi_ba, pair.moving.data, pair.fixed.grid, pair.moving.grid,
                         device, int(cfg["output"]["chunk"]))
    dense_seconds = time.perf_counter() - t_dense

    region = pair.mask
    before = identity_resample(pair)
    summary = {
        "nephi_version": __version__,
        "direction": "warp.nii.gz maps fixed points p (LPS mm) to moving points p + d(p); "
                     "warped = moving(phi_AB(x)) on the fixed grid",
        "moving": os.path.abspath(pair.moving.path),
        "fixed": os.path.abspath(pair.fixed.path),
        "mask": getattr(pair, "mask_path", None),
        "landmarks": getattr(pair, "landmarks_path", None),
        "moving_landmarks": getattr(pair, "moving_landmarks_path", None),
        "ncc_region": "mask" if region is not None else "fixed image",
        "ncc_before": ncc_in(before, pair.fixed.data, region),
        "ncc_after": ncc_in(dense.warped, pair.fixed.data, region),
        "folding_percent": float(100.0 * np.mean(dense.jacobian <= 0)),
        "jacobian_min": float(dense.jacobian.min()),
        "inverse_consistency_mm_mean": float(
            dense.inverse_error_mm[region].mean() if region is not None
            else dense.inverse_error_mm.mean()),
        "inverse_consistency_mm_p95": float(np.percentile(
            dense.inverse_error_mm[region] if region is not None else dense.inverse_error_mm, 95)),
        "io_mode": io.mode,
        "io_inverse": io.info.get("inverse"),
        "io_info": io.info,
        "io_steps": io.steps,
        "io_seconds": io.seconds,
        "dense_seconds": dense_seconds,
        "final_losses": io.history[-1] if io.history else {},
        "device": str(device),
    }
    if region is not None:
        summary["folding_percent_in_mask"] = float(100.0 * np.mean(dense.jacobian[region] <= 0))
    mapped = None
    if pair.landmarks is not None:
        mapped = map_points(pair.landmarks, dense.forward_disp_ras, pair.fixed.grid)
        if pair.moving_landmarks is not None:
            summary["landmark_error_before_mm"] = landmark_errors(pair.landmarks,
                                                                  pair.moving_landmarks)
            summary["landmark_error_after_mm"] = landmark_errors(mapped, pair.moving_landmarks)
    if extra_summary:
        summary.update(extra_summary)

    with AtomicDir(out_dir) as tmp:
        save_image(os.path.join(tmp, "warped.nii.gz"), dense.warped, pair.fixed.grid)
        write_displacement_field(os.path.join(tmp, "warp.nii.gz"), dense.forward_disp_ras,
                                 pair.fixed.grid)
        write_displacement_field(os.path.join(tmp, "inverse_warp.nii.gz"),
                                 dense.backward_disp_ras, pair.moving.grid)
        write_displacement_h5(os.path.join(tmp, "transform.h5"), dense.forward_disp_ras,
                              pair.fixed.grid)
        write_displacement_h5(os.path.join(tmp, "inverse_transform.h5"),
                              dense.backward_disp_ras, pair.moving.grid)
        save_scalar(os.path.join(tmp, "jacobian.nii.gz"), dense.jacobian, pair.fixed.grid)
        if mapped is not None:
            save_points(os.path.join(tmp, "landmarks_moving.csv"), mapped)
        if cfg["output"].get("qc", False):
            from .quicklook import QC_FILE, write_overview

            write_overview(os.path.join(tmp, QC_FILE), pair.fixed, pair.moving, dense.warped,
                           dense.forward_disp_ras, dense.jacobian, pair.mask, summary,
                           os.path.basename(os.path.normpath(out_dir)))
        summary["wall_time_s"] = time.perf_counter() - t0
        summary["peak_memory_mb"] = peak_memory_mb(device)
        summary["peak_memory_kind"] = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                                       else "process max RSS")
        summary["command"] = command if command is not None else sys.argv
        summary["config"] = cfg
        with open(os.path.join(tmp, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    return summary
