"""Register one pair: optimize, evaluate densely, measure; then (optionally) write the folder.

A = moving, B = fixed. ``phi_AB`` maps fixed points to moving points; the warped image is the
moving image pulled back onto the fixed grid. Every IO mode goes the same way:
:func:`nephi.optim.engine.instance_optimize` returns the point maps (phi_AB, phi_BA) of the frame
it optimized in, :class:`~nephi.transforms.base.Conjugated` brings them to the fixed image's
frame when that was a network's grid, and dense export, metrics and files are the same for every
mode. :func:`register_pair` returns a :class:`~nephi.results.result.Result` in memory;
:func:`register` also writes it (files: :mod:`nephi.io.layout`).
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np
import torch

from nephi import __version__
from nephi.config.validate import validate_pairwise
from nephi.data.preprocess import resample
from nephi.errors import NephiInputError
from nephi.geometry.pair import PairTensors
from nephi.io.atomic import check_output_dir
from nephi.io.intensity import normalize
from nephi.io.itk_images import output_suffix
from nephi.objectives.similarity import ncc
from nephi.optim.align import align
from nephi.optim.engine import IOResult, instance_optimize
from nephi.optim.refinements import fixed_point_inverse
from nephi.pipeline.batch import run_pairs
from nephi.pipeline.inputs import LoadedPair, select_device
from nephi.results.metrics import folding_percent, landmark_errors
from nephi.results.result import Result
from nephi.results.warp import mapped_index, sample_index
from nephi.transforms.affine import Affine
from nephi.transforms.base import Composition, Conjugated
from nephi.transforms.dense import DenseFields, dense_fields, tabulate
from nephi.transforms.displacement import Field


__all__ = ["pair_tensors", "global_alignment", "register_pair", "register", "register_pairs",
           "save_result"]


def _normalized(img, cfg: dict) -> np.ndarray:
    icfg = cfg["intensity"]
    return normalize(img.data, icfg["method"], icfg["low"], icfg["high"], icfg["window"])


def pair_tensors(pair: LoadedPair, cfg: dict, device, pre_affine: Affine | None = None,
                 pre_field: Field | None = None) -> PairTensors:
    """Normalized intensities of both images as (1, 1, *S) tensors on ``device``; with
    ``pre_affine`` the moving image is seen through that global alignment. With ``pre_field``
    (fixed -> moving points) the moving image (linear) and its mask (nearest) are resampled
    through it onto the fixed grid, which then is the moving grid too: what IO optimizes on."""
    moving, moving_grid = _normalized(pair.moving, cfg), pair.moving.grid
    moving_mask = pair.moving_mask
    if pre_field is not None:
        index = mapped_index(pre_field, pair.fixed.grid, moving_grid)
        shape = pair.fixed.grid.shape
        moving = sample_index(moving, index).reshape(shape)
        if moving_mask is not None:
            moving_mask = sample_index(moving_mask, index, "nearest").reshape(shape)
        moving_grid = pair.fixed.grid

    def prep(values, grid):
        return torch.as_tensor(values, device=device).reshape(1, 1, *grid.shape)

    def mask(values):
        return None if values is None else torch.as_tensor(values, device=device).unsqueeze(0)

    return PairTensors(prep(_normalized(pair.fixed, cfg), pair.fixed.grid),
                       prep(moving, moving_grid), pair.fixed.grid, moving_grid, mask(pair.mask),
                       pre_affine=None if pre_affine is None else pre_affine.matrix,
                       moving_mask=mask(moving_mask))


def global_alignment(pair: LoadedPair, cfg: dict, initial: Affine | None = None,
                     progress: bool = True) -> tuple:
    """The ``align`` stage (:func:`nephi.optim.align.align`) on the pair's normalized images,
    starting from ``initial`` (e.g. ``--initial-transform``) -> (Affine or None, info or None);
    None when there is neither an alignment to run nor a transform given."""
    if cfg["align"]["mode"] == "none" and initial is None:
        return None, None
    return align(_normalized(pair.fixed, cfg), pair.fixed.grid, _normalized(pair.moving, cfg),
                 pair.moving.grid, cfg["align"], fixed_mask=pair.mask, start=initial,
                 moving_mask=pair.moving_mask,
                 seed=int(cfg["seed"]), progress=progress,
                 lncc_window=int(cfg["io"]["lncc_window"]))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# The inverse of a start field by fixed-point iteration: at most this many evaluations, until no
# point moves by more than this (frame units of the fixed grid).
FIELD_INVERSE_ITERATIONS = 50
FIELD_INVERSE_TOLERANCE = 1e-5


def _after_field(field: Field, grid, phi_ab, phi_ba) -> tuple:
    """The maps (phi_AB, phi_BA) of the fixed ``grid``'s frame for IO maps (phi, phi^-1) that
    were optimized on the pair seen through a start ``field`` (fixed -> moving):
    phi_AB = F o phi and phi_BA = phi^-1 o F^-1, F^-1 by fixed-point iteration (exact where F
    does not fold)."""
    forward = field.in_frame(grid)

    def inverse(y: torch.Tensor) -> torch.Tensor:
        return fixed_point_inverse(lambda x: forward(x) - x, y, FIELD_INVERSE_ITERATIONS,
                                   FIELD_INVERSE_TOLERANCE)

    return Composition(forward, phi_ab), Composition(phi_ba, inverse)


def _ncc_in(a: np.ndarray, b: np.ndarray, region: np.ndarray | None) -> float:
    if region is not None:
        a, b = a[region], b[region]
    return float(ncc(torch.as_tensor(a, dtype=torch.float64).reshape(1, -1),
                     torch.as_tensor(b, dtype=torch.float64).reshape(1, -1))[0])


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(pair: LoadedPair, dense: DenseFields, io: IOResult, device) -> dict:
    """Metrics of a registration: NCC before/after, folding, inverse consistency, landmarks."""
    region = pair.mask
    before = resample(pair.moving.data, pair.moving.grid, pair.fixed.grid)
    errors = dense.inverse_error_mm[region] if region is not None else dense.inverse_error_mm
    summary = {
        "nephi_version": __version__,
        "direction": "warp.nii.gz maps fixed points p (LPS mm) to moving points p + d(p); "
                     "warped = moving(phi_AB(x)) on the fixed grid",
        "moving": os.path.abspath(pair.moving.path) if pair.moving.path else None,
        "fixed": os.path.abspath(pair.fixed.path) if pair.fixed.path else None,
        "mask": pair.mask_path,
        "moving_mask": pair.moving_mask_path,
        "landmarks": pair.landmarks_path,
        "moving_landmarks": pair.moving_landmarks_path,
        "ncc_region": "mask" if region is not None else "fixed image",
        "ncc_before": _ncc_in(before, pair.fixed.data, region),
        "ncc_after": _ncc_in(dense.warped, pair.fixed.data, region),
        "folding_percent": folding_percent(dense.jacobian),
        "jacobian_min": float(dense.jacobian.min()),
        "inverse_consistency_mm_mean": float(errors.mean()),
        "inverse_consistency_mm_p95": float(np.percentile(errors, 95)),
        "io_mode": io.mode,
        "io_inverse": io.info.get("inverse"),
        "io_info": io.info,
        "io_steps": io.steps,
        "io_seconds": io.seconds,
        "final_losses": io.history[-1] if io.history else {},
        "device": str(device),
    }
    if region is not None:
        summary["folding_percent_in_mask"] = folding_percent(dense.jacobian[region])
    return summary


def register_pair(pair: LoadedPair, cfg: dict, progress: bool = True, init: tuple | None = None,
                  io_params: str = "all", network_view: tuple | None = None,
                  extra_summary: dict | None = None, initial: Affine | Field | None = None,
                  aligned: tuple | None = None) -> Result:
    """Register ``pair`` with the IO mode ``cfg['io']['mode']`` -> an in-memory Result.

    ``cfg``: a resolved pairwise config (validated here). ``init``: optional (fields, latent) to
    start from (a network's prediction); they are copied, never changed. Without it the maps
    start at the identity (``nephi``: fresh fields). ``network_view``: optional (tensors,
    frame_to_net): the pair as a trained network sees it (:class:`PairTensors` on the network's
    grid) and the homogeneous matrix from the fixed image's frame to that grid's frame; IO then
    runs there and the result still lives on the original fixed and moving grids.
    ``extra_summary`` is merged into the summary. ``initial``: a global transform to start the
    alignment from (pairwise runs without ``init``: a given start map is the whole map). With
    an alignment the maps are phi_AB = A o phi and phi_BA = phi^-1 o A^-1 (A the affine, phi
    what IO optimized on the aligned pair); the moving image is sampled once, through the whole
    map. ``aligned``: an alignment (Affine, info) already made (a network's view of the pair was
    built through it); it is composed the same way. A displacement field as ``initial`` (F,
    fixed -> moving) replaces the alignment: IO optimizes on the moving image resampled through
    F (:func:`pair_tensors`), phi_AB = F o phi and phi_BA = phi^-1 o F^-1 (:func:`_after_field`),
    and the moving image is again sampled once, through the whole map.
    """
    validate_pairwise(cfg)
    if network_view is None and cfg["output"]["field_grid"] == "network":
        raise NephiInputError("output.field_grid: network needs a trained network "
                              "(--checkpoint); use auto or voxels")
    t0 = time.perf_counter()
    device = select_device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    affine, align_info = aligned if aligned is not None else (None, None)
    start_field = initial if isinstance(initial, Field) else None
    if network_view is None:
        # a given start map (init, or a start field) is the whole map: no alignment before it
        if init is None and start_field is None:
            affine, align_info = global_alignment(pair, cfg, initial, progress)
        tensors, frame_to_net = pair_tensors(pair, cfg, device, affine, start_field), None
    else:
        tensors, frame_to_net = network_view
    if cfg["align"]["only"]:
        start = "initial displacement field" if start_field is not None else "affine"
        io = IOResult(mode="none", phi_ab=_identity, phi_ba=_identity,
                      info={"inverse": f"the inverse of the {start} (alignment only)"})
    else:
        io = instance_optimize(tensors, cfg, init=init, io_params=io_params, progress=progress)
    phi_ab, phi_ba = io.phi_ab, io.phi_ba
    if frame_to_net is not None:
        if cfg["output"]["field_grid"] != "voxels":  # auto or network: the network's grid
            shape = tensors.fixed_grid.shape
            phi_ab, phi_ba = (tabulate(phi, shape, device, twice_differentiable=False)
                              for phi in (phi_ab, phi_ba))
        phi_ab, phi_ba = Conjugated(phi_ab, frame_to_net), Conjugated(phi_ba, frame_to_net)
    if affine is not None:
        phi_ab = Composition(affine.in_frame(pair.fixed.grid), phi_ab)
        phi_ba = Composition(phi_ba, affine.inverse().in_frame(pair.fixed.grid))
    if start_field is not None:
        phi_ab, phi_ba = _after_field(start_field, pair.fixed.grid, phi_ab, phi_ba)

    t_dense = time.perf_counter()
    dense = dense_fields(phi_ab, phi_ba, pair.moving.data, pair.fixed.grid, pair.moving.grid,
                         device, int(cfg["output"]["chunk"]))
    summary = _summary(pair, dense, io, device)
    summary["dense_seconds"] = time.perf_counter() - t_dense
    if affine is not None:
        summary["align"] = {**align_info, **affine.parts()}
    mapped = None
    if pair.landmarks is not None:
        forward = Field(dense.forward_disp_ras, pair.fixed.grid)
        mapped = forward(pair.landmarks)
        if pair.moving_landmarks is not None:
            summary["landmark_error_before_mm"] = landmark_errors(pair.landmarks,
                                                                  pair.moving_landmarks)
            summary["landmark_error_after_mm"] = landmark_errors(mapped, pair.moving_landmarks)
    summary.update(extra_summary or {})
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["peak_memory_mb"] = _peak_memory_mb(device)
    summary["peak_memory_kind"] = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                                   else "process max RSS")
    summary["config"] = cfg
    return Result(forward=Field(dense.forward_disp_ras, pair.fixed.grid),
                  inverse=Field(dense.backward_disp_ras, pair.moving.grid),
                  jacobian=dense.jacobian, warped=dense.warped, summary=summary,
                  landmarks_moving=mapped, fixed=pair.fixed, moving=pair.moving, mask=pair.mask,
                  affine=affine)


def register(pair: LoadedPair, out_dir: str, cfg: dict, command: list | None = None,
             progress: bool = True, **options) -> dict:
    """:func:`register_pair`, then write the result folder ``out_dir`` (atomically; the
    summary records ``command``). ``options`` go to :func:`register_pair`. Returns the summary."""
    validate_pairwise(cfg)
    check_output_dir(out_dir)
    result = register_pair(pair, cfg, progress=progress, **options)
    save_result(result, out_dir, cfg, command)
    return result.summary


def save_result(result: Result, out_dir: str, cfg: dict, command: list | None = None) -> None:
    """Write ``result`` as configured by ``cfg['output']`` (quick look, image format, log
    Jacobian; images in the fixed input's format unless ``output.format`` says otherwise);
    the summary records ``command`` (default: this process's command line)."""
    result.summary["command"] = command if command is not None else sys.argv
    out = cfg["output"]
    fixed_path = result.fixed.path if result.fixed is not None else ""
    result.save(out_dir, qc=bool(out["qc"]), log_jacobian=bool(out["log_jacobian"]),
                image_suffix=output_suffix(fixed_path, out["format"]))


def register_pairs(pairs_csv: str, out_dir: str, cfg: dict, command: list | None = None,
                   progress: bool = True, log=print) -> dict:
    """Pairwise registration of every pair of ``pairs_csv`` (see
    :func:`nephi.pipeline.batch.run_pairs`: one folder per pair, resumable, summary.csv)."""
    validate_pairwise(cfg)

    def one(pair: LoadedPair, row: dict, folder: str) -> dict:
        return register(pair, folder, cfg, command=command, progress=progress)

    return run_pairs(pairs_csv, out_dir, one, log)
