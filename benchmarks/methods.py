"""Registration methods of the peer benchmark, behind one interface, and the metrics they share.

Every method registers a *case* (one moving/fixed pair, see :class:`Case`) and leaves in its
output folder:

* ``field.nii.gz``: the fixed->moving map phi_AB - Id on the FIXED grid as an ITK displacement
  field (``nephi.io.fields`` layout: LPS millimetres; a fixed point p goes to the moving point
  p + d(p)). nephi writes it as ``warp.nii.gz``; each peer's own transform is turned into this
  dense field with the peer's own tools (ANTs ``compose``, transformix's deformation field,
  dipy's forward field, the SimpleITK demons field).
* ``points_moving.csv``: the FIXED landmarks (RAS mm) carried into moving space by the method's
  own point mapping (``antsApplyTransformsToPoints``, transformix with a fixed point set, dipy's
  ``transform_points``, ``DisplacementFieldTransform.TransformPoint``; nephi's
  ``landmarks_moving.csv``). The benchmark reports landmark errors from these points and checks
  that they agree with the dense field.
* ``method.json``: registration seconds measured inside the method (without imports and file
  writing), the settings, the tool version.

Directions: A = moving (exhale), B = fixed (inhale). Each tool's point-mapping direction is a
classic trap: ``tests/integration/test_bench_harness.py`` checks every adapter on a pair related by a known
translation.

Peers run in a worker process, ``python -m benchmarks.methods METHOD CASE.json OUT_DIR``, so that
the benchmark measures their wall time and peak memory exactly as it does for ``nephi-infer``.
Thread counts come from the environment the benchmark sets (``OMP_NUM_THREADS``,
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np



ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nephi.geometry.grid import Grid, ras_to_lps
from nephi.io.itk_images import from_sitk
from nephi.io.fields import read_displacement_field, write_displacement_field
from nephi.io.images import load_image
from nephi.io.points import load_points, save_points
from nephi.transforms.displacement import map_points


FIELD_FILE = "field.nii.gz"
POINTS_FILE = "points_moving.csv"
METHOD_FILE = "method.json"
PROFILES = ("full", "quick", "test")


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One registration problem: paths of moving (A) and fixed (B) images and what goes with them.

    ``fixed_points`` / ``moving_points``: CSV ``x,y,z`` in RAS mm, row n of one corresponds to
    row n of the other. ``fixed_labels`` / ``moving_labels``: label maps on the image grids
    (Dice). ``group``: the table the case belongs to (e.g. ``lung 64^3``).
    """

    name: str
    group: str
    ndim: int
    moving: str
    fixed: str
    fixed_mask: Optional[str] = None
    moving_mask: Optional[str] = None
    fixed_points: Optional[str] = None
    moving_points: Optional[str] = None
    fixed_labels: Optional[str] = None
    moving_labels: Optional[str] = None
    shape: tuple = ()
    spacing: tuple = ()
    seed: Optional[int] = None

    def to_json(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)

    @classmethod
    def from_json(cls, path: str) -> "Case":
        with open(path) as fh:
            data = json.load(fh)
        data["shape"] = tuple(data.get("shape", ()))
        data["spacing"] = tuple(data.get("spacing", ()))
        return cls(**data)


# ------------------------------------------------------------------- fields, points, metrics
def sitk_field_to_ras(field) -> tuple:
    """A SimpleITK vector image (displacements in LPS mm) -> (displacement (*S, d) RAS mm, Grid).

    The array comes back in nephi's axis order (x, y[, z]) and the grid's affine maps voxel
    indices to RAS mm, as nibabel reads the same file.
    """
    arr, affine = from_sitk(field)
    d = field.GetDimension()
    return ras_to_lps(arr.astype(np.float64)), Grid(arr.shape[:d], affine)


def save_sitk_field(path: str, field, fixed_grid: Grid) -> None:
    """Write a SimpleITK displacement image as ``field.nii.gz``; it must lie on the fixed grid."""
    disp, grid = sitk_field_to_ras(field)
    if not grid.same_as(fixed_grid, tol=1e-3):
        raise RuntimeError(f"displacement field grid {grid.shape} does not match the fixed grid "
                           f"{fixed_grid.shape}")
    write_displacement_field(path, disp.astype(np.float32), fixed_grid)


def read_field(path: str) -> tuple:
    """``field.nii.gz`` -> (displacement (*S, d) in RAS mm, Grid)."""
    return read_displacement_field(path)


def jacobian_determinant(disp_ras: np.ndarray, grid: Grid) -> np.ndarray:
    """det of the Jacobian of phi(x) = x + d(x) on ``grid`` by central differences.

    Derivatives are taken along the voxel axes (one-sided at the border, ``numpy.gradient``)
    and brought to physical coordinates with the grid's affine, so the same code serves every
    method's field: det(dphi/dx) = det(A + dd/di) / det(A) with A the voxel->RAS matrix.
    """
    d = grid.ndim
    a = grid.affine[:d, :d]
    jac = np.empty(disp_ras.shape[:d] + (d, d), dtype=np.float64)
    for comp in range(d):
        grads = np.gradient(disp_ras[..., comp].astype(np.float64), axis=tuple(range(d)))
        for axis in range(d):
            jac[..., comp, axis] = grads[axis] + a[comp, axis]
    return np.linalg.det(jac) / np.linalg.det(a)


def folding_percent(disp_ras: np.ndarray, grid: Grid, region: Optional[np.ndarray] = None) -> float:
    """Percent of voxels (of ``region`` when given) where det J of the fixed->moving map <= 0."""
    det = jacobian_determinant(disp_ras, grid)
    if region is not None:
        det = det[region]
    return float(100.0 * np.mean(det <= 0))


def warp_nearest(moving: np.ndarray, moving_grid: Grid, disp_ras: np.ndarray,
                 fixed_grid: Grid) -> np.ndarray:
    """Pull a label map back onto the fixed grid: label(phi(x)), nearest neighbour, 0 outside."""
    from scipy.ndimage import map_coordinates

    d = fixed_grid.ndim
    idx = np.indices(fixed_grid.shape, dtype=np.float64).reshape(d, -1).T
    pts = fixed_grid.index_to_ras_points(idx) + disp_ras.reshape(-1, d)
    mov_idx = moving_grid.ras_to_index_points(pts)
    out = map_coordinates(np.asarray(moving), mov_idx.T, order=0, mode="constant", cval=0)
    return out.reshape(fixed_grid.shape)


def field_points(points_ras: np.ndarray, field_path: str) -> np.ndarray:
    """Fixed points (RAS mm) carried to moving space through the dense field file."""
    disp, grid = read_field(field_path)
    return map_points(points_ras, disp, grid)


def write_points_txt(path: str, points_lps: np.ndarray) -> None:
    """An elastix/transformix point file of physical (LPS mm) points."""
    with open(path, "w") as fh:
        fh.write(f"point\n{len(points_lps)}\n")
        for p in points_lps:
            fh.write(" ".join(f"{v:.6f}" for v in p) + "\n")


def read_transformix_points(path: str, ndim: int) -> np.ndarray:
    """Parse ``OutputPoint = [ x y z ]`` from transformix's ``outputpoints.txt`` (LPS mm)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            part = line.split("OutputPoint = [")[1].split("]")[0]
            rows.append([float(v) for v in part.split()[:ndim]])
    return np.asarray(rows, dtype=np.float64)


# ------------------------------------------------------------------------------- the peers
@dataclass
class Peer:
    """A peer method: its settings per profile, mask support, availability and runner.

    ``run(case, out_dir, settings, use_mask)`` registers the case, writes ``field.nii.gz`` and
    (with landmarks) ``points_moving.csv`` into ``out_dir``, and returns the registration
    seconds measured around the optimization alone.
    """

    key: str
    label: str
    module: str
    supports_mask: bool
    settings: Callable[[str, int], dict]
    describe: Callable[[dict], str]
    run: Callable[[Case, str, dict, bool], float]

    def available(self) -> tuple:
        """(True, version) when the tool imports, else (False, reason)."""
        if importlib.util.find_spec(self.module) is None:
            return False, (f"{self.module} is not installed (pip install -e '.[bench]')")
        return True, ""


def _version(module: str) -> str:
    from importlib import metadata

    dist = {"ants": "antspyx", "itk": "itk-elastix", "dipy": "dipy", "SimpleITK": "SimpleITK"}
    try:
        return f"{dist.get(module, module)} {metadata.version(dist.get(module, module))}"
    except metadata.PackageNotFoundError:
        return module


def _fixed_points(case: Case) -> Optional[np.ndarray]:
    return load_points(case.fixed_points, case.ndim, "fixed points") if case.fixed_points else None


# ------------------------------------------------------------------------------------ ANTs
def ants_settings(kind: str, profile: str, ndim: int) -> dict:
    """antsRegistration stages of ``ants-syn-strong`` / ``ants-syn-fast`` for a profile.

    strong: as antsRegistrationSyN.sh (rigid, affine with MI, SyN with CC radius 4 and
    iterations at every level including full resolution). fast: as antsRegistrationSyNQuick.sh
    (the same linear stages without a full-resolution level, SyN with MI and no full-resolution
    level). The ``quick`` and ``test`` profiles run on small images, where a shrink factor of 8
    leaves too few voxels (inside a lung mask) for the linear stages: they start at 4 or 2.
    """
    shrink, sigmas = "8x4x2x1", "3x2x1x0vox"
    if profile == "test":
        shrink, sigmas = "2x1", "1x0vox"
        linear = "40x20" if kind == "strong" else "40x0"
        syn = "20x10" if kind == "strong" else "20x0"
    elif profile == "quick":
        shrink, sigmas = "4x2x1", "2x1x0vox"
        linear = "200x100x20" if kind == "strong" else "200x100x0"
        syn = "40x20x10" if kind == "strong" else "40x20x0"
    else:
        linear = "1000x500x250x100" if kind == "strong" else "1000x500x250x0"
        syn = "100x70x50x20" if kind == "strong" else "100x70x50x0"
    metric = "CC[{f},{m},1,4]" if kind == "strong" else "MI[{f},{m},1,32]"
    return {"linear_metric": "MI[{f},{m},1,32,Regular,0.25]", "linear_iterations": linear,
            "syn_transform": "SyN[0.1,3,0]", "syn_metric": metric, "syn_iterations": syn,
            "shrink_factors": shrink, "smoothing_sigmas": sigmas,
            "initial": "center of mass", "random_seed": 1}


def ants_describe(s: dict) -> str:
    metric = s["syn_metric"].split("[")[0]
    extra = ", radius 4" if metric == "CC" else ", 32 bins"
    return (f"centre-of-mass start, rigid+affine MI 32 bins [{s['linear_iterations']}] "
            "(no mask), then "
            f"{s['syn_transform']} "
            f"{metric}{extra} [{s['syn_iterations']}], shrink {s['shrink_factors']}, "
            f"smoothing {s['smoothing_sigmas']}")


def ants_run(case: Case, out_dir: str, s: dict, use_mask: bool) -> float:
    """antsRegistration through antspyx's library call; dense field by antsApplyTransforms
    ``compose``; landmarks by antsApplyTransformsToPoints with the forward transforms.

    With a mask, the linear stages see the whole image and only SyN is restricted to the fixed
    mask (per-stage ``--masks``): a lung mask leaves too few samples for MI at coarse levels.
    """
    from ants.internal import get_lib_fn

    prefix = os.path.join(out_dir, "ants_")
    f, m = case.fixed, case.moving
    conv = "[{},1e-6,10]"
    args = ["--dimensionality", str(case.ndim), "--float", "1", "--collapse-output-transforms", "1",
            "--output", f"[{prefix}]", "--interpolation", "Linear",
            "--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
            "--initial-moving-transform", f"[{f},{m},1]"]
    masked = bool(use_mask and case.fixed_mask)
    for tx in ("Rigid[0.1]", "Affine[0.1]"):
        args += ["--transform", tx, "--metric", s["linear_metric"].format(f=f, m=m),
                 "--convergence", conv.format(s["linear_iterations"]),
                 "--shrink-factors", s["shrink_factors"],
                 "--smoothing-sigmas", s["smoothing_sigmas"]]
        if masked:
            args += ["--masks", "[NULL,NULL]"]
    args += ["--transform", s["syn_transform"], "--metric", s["syn_metric"].format(f=f, m=m),
             "--convergence", conv.format(s["syn_iterations"]),
             "--shrink-factors", s["shrink_factors"], "--smoothing-sigmas", s["smoothing_sigmas"]]
    if masked:
        args += ["--masks", f"[{case.fixed_mask},NULL]"]
    args += ["--random-seed", str(s["random_seed"])]
    t0 = time.perf_counter()
    status = get_lib_fn("antsRegistration")([str(a) for a in args])
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"antsRegistration exited with status {status}")
    _ants_outputs(case, out_dir, [prefix + "1Warp.nii.gz", prefix + "0GenericAffine.mat"],
                  prefix)
    return seconds


def _ants_outputs(case: Case, out_dir: str, fwd: list, prefix: str) -> None:
    """The forward ANTs transforms ``fwd`` -> ``field.nii.gz`` (antsApplyTransforms compose) and
    ``points_moving.csv`` (antsApplyTransformsToPoints)."""
    import ants
    import pandas as pd

    fixed_img, moving_img = ants.image_read(case.fixed), ants.image_read(case.moving)
    composed = ants.apply_transforms(fixed_img, moving_img, fwd, compose=prefix + "fwd_")
    _save_field_file(composed, case, out_dir)
    pts = _fixed_points(case)
    if pts is not None:
        cols = ["x", "y", "z"][:case.ndim]
        frame = pd.DataFrame(ras_to_lps(pts), columns=cols)
        moved = ants.apply_transforms_to_points(case.ndim, frame, fwd)
        save_points(os.path.join(out_dir, POINTS_FILE), ras_to_lps(moved[cols].to_numpy()))


def antspy_settings(profile: str, ndim: int) -> dict:
    """``ants.registration(fixed, moving, "SyN")`` as ANTsPy ships it (its defaults: affine
    with MI, then SyN with MI, 40x20x0 iterations); the ``test`` profile shortens both."""
    s = {"type_of_transform": "SyN", "random_seed": 1}
    if profile == "test":
        s.update(aff_iterations=(40, 20, 0, 0), reg_iterations=(20, 10, 0))
    return s


def antspy_syn_settings(metric: str, profile: str, ndim: int) -> dict:
    """``ants.registration(fixed, moving, "SyN")`` with SyN iterations 100x70x50 (shrink 4x2x1,
    smoothing 2x1x0 voxels) and the SyN metric ``metric``: ``mattes`` (MI, 32 bins) or ``CC``
    (radius 4); ANTsPy's affine stage as it ships. The ``test`` profile shortens both."""
    s = {"type_of_transform": "SyN", "random_seed": 1, "reg_iterations": (100, 70, 50),
         "syn_metric": metric, "syn_sampling": 32 if metric == "mattes" else 4}
    if profile == "test":
        s.update(aff_iterations=(40, 20, 0, 0), reg_iterations=(20, 10, 0))
    return s


def antspy_describe(s: dict) -> str:
    extra = {k: v for k, v in s.items() if k not in ("type_of_transform", "random_seed")}
    metric = {"mattes": "MI", "CC": "CC"}[s.get("syn_metric", "mattes")]
    detail = "32 bins" if metric == "MI" else f"radius {s['syn_sampling']}"
    its = "x".join(str(i) for i in s.get("reg_iterations", (40, 20, 0)))
    return (f"ants.registration(type_of_transform='{s['type_of_transform']}') with ANTsPy's "
            f"defaults{' and ' + str(extra) if extra else ''} (affine MI, SyN {metric} "
            f"{detail} {its})")


def antspy_run(case: Case, out_dir: str, s: dict, use_mask: bool) -> float:
    """ANTsPy's own registration call; field and points as :func:`ants_run` makes them."""
    import ants

    fixed_img, moving_img = ants.image_read(case.fixed), ants.image_read(case.moving)
    kwargs = {k: v for k, v in s.items() if k not in ("type_of_transform", "random_seed")}
    # ants.registration takes no seed argument (an unknown keyword is ignored); its
    # antsRegistration reads ANTS_RANDOM_SEED (this worker is its own process)
    os.environ["ANTS_RANDOM_SEED"] = str(int(s["random_seed"]))
    if use_mask and case.fixed_mask:
        kwargs["mask"] = ants.image_read(case.fixed_mask)
    prefix = os.path.join(out_dir, "antspy_")
    t0 = time.perf_counter()
    out = ants.registration(fixed_img, moving_img, s["type_of_transform"], outprefix=prefix,
                            **kwargs)
    seconds = time.perf_counter() - t0
    _ants_outputs(case, out_dir, out["fwdtransforms"], prefix)
    return seconds


def _save_field_file(path: str, case: Case, out_dir: str) -> None:
    """Any ITK-readable displacement field file -> ``field.nii.gz`` on the fixed grid."""
    import SimpleITK as sitk

    fixed_grid = load_image(case.fixed, "fixed image").grid
    save_sitk_field(os.path.join(out_dir, FIELD_FILE), sitk.ReadImage(path), fixed_grid)


# --------------------------------------------------------------------------------- elastix
def elastix_settings(profile: str, ndim: int) -> dict:
    """Affine then B-spline elastix parameter maps (NCC, ASGD, 4 resolutions, random samples)."""
    its = {"full": (256, 500), "quick": (100, 150), "test": (50, 60)}[profile]
    return {"resolutions": 2 if profile == "test" else 4, "affine_iterations": its[0],
            "bspline_iterations": its[1], "metric": "AdvancedNormalizedCorrelation",
            "grid_spacing_voxels": 4, "spatial_samples": 2048, "optimizer":
            "AdaptiveStochasticGradientDescent"}


def elastix_describe(s: dict) -> str:
    return (f"affine ({s['affine_iterations']} it) then B-spline, grid spacing "
            f"{s['grid_spacing_voxels']} voxels, {s['metric']}, {s['resolutions']} resolutions x "
            f"{s['bspline_iterations']} it, {s['spatial_samples']} random samples, ASGD, mask "
            "not eroded")


def elastix_run(case: Case, out_dir: str, s: dict, use_mask: bool) -> float:
    """itk-elastix registration; dense field and landmarks by transformix (it maps points of
    the FIXED domain to the moving domain)."""
    import itk

    fixed = itk.imread(case.fixed, itk.F)
    moving = itk.imread(case.moving, itk.F)
    params = itk.ParameterObject.New()
    res = s["resolutions"]
    for name, its in (("affine", s["affine_iterations"]), ("bspline", s["bspline_iterations"])):
        pm = params.GetDefaultParameterMap(name, res)
        pm["Metric"] = [s["metric"]]
        pm["MaximumNumberOfIterations"] = [str(its)]
        pm["NumberOfSpatialSamples"] = [str(s["spatial_samples"])]
        pm["WriteResultImage"] = ["false"]
        pm["ErodeMask"] = ["false"]
        if name == "bspline":
            pm.erase("FinalGridSpacingInPhysicalUnits")
            pm["FinalGridSpacingInVoxels"] = [str(s["grid_spacing_voxels"])]
            pm.erase("Metric0Weight")
            pm.erase("Metric1Weight")
            pm["Registration"] = ["MultiResolutionRegistration"]
        params.AddParameterMap(pm)
    reg = itk.ElastixRegistrationMethod.New(fixed, moving)
    reg.SetParameterObject(params)
    reg.SetLogToConsole(False)
    reg.SetOutputDirectory(out_dir)
    reg.SetLogToFile(True)
    if use_mask and case.fixed_mask:
        reg.SetFixedMask(itk.imread(case.fixed_mask, itk.UC))
    t0 = time.perf_counter()
    reg.UpdateLargestPossibleRegion()
    seconds = time.perf_counter() - t0
    tparams = reg.GetTransformParameterObject()
    trx = itk.TransformixFilter.New(moving)
    trx.SetTransformParameterObject(tparams)
    trx.SetComputeDeformationField(True)
    trx.SetOutputDirectory(out_dir)
    trx.SetLogToConsole(False)
    trx.UpdateLargestPossibleRegion()
    raw = os.path.join(out_dir, "elastix_deformation.nii.gz")
    itk.imwrite(trx.GetOutputDeformationField(), raw)
    _save_field_file(raw, case, out_dir)
    pts = _fixed_points(case)
    if pts is not None:
        pts_file = os.path.join(out_dir, "fixed_points_lps.txt")
        write_points_txt(pts_file, ras_to_lps(pts))
        trx_pts = itk.TransformixFilter.New(moving)
        trx_pts.SetTransformParameterObject(tparams)
        trx_pts.SetFixedPointSetFileName(pts_file)
        trx_pts.SetOutputDirectory(out_dir)
        trx_pts.SetLogToConsole(False)
        trx_pts.UpdateLargestPossibleRegion()
        moved = read_transformix_points(os.path.join(out_dir, "outputpoints.txt"), case.ndim)
        save_points(os.path.join(out_dir, POINTS_FILE), ras_to_lps(moved))
    return seconds


# ------------------------------------------------------------------------------------ dipy
def dipy_settings(profile: str, ndim: int) -> dict:
    """dipy SymmetricDiffeomorphicRegistration with CCMetric; level_iters coarsest first."""
    levels = {"full": [100, 50, 25], "quick": [40, 20, 10], "test": [30, 20]}[profile]
    return {"metric": "CCMetric", "sigma_diff": 2.0, "radius": 4, "level_iters": levels,
            "step_length": 0.25, "inv_iter": 20}


def dipy_describe(s: dict) -> str:
    return (f"SyN, CCMetric radius {s['radius']} sigma_diff {s['sigma_diff']}, level_iters "
            f"{s['level_iters']} (coarse->fine), step {s['step_length']}, no prealignment")


def dipy_run(case: Case, out_dir: str, s: dict, use_mask: bool) -> float:
    """dipy SyN in world (RAS mm) coordinates; the forward field lives on the static (fixed) grid
    and maps static points to moving points; landmarks by ``transform_points``."""
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    fixed = load_image(case.fixed, "fixed image")
    moving = load_image(case.moving, "moving image")
    metric = CCMetric(case.ndim, sigma_diff=s["sigma_diff"], radius=s["radius"])
    sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=list(s["level_iters"]),
                                             step_length=s["step_length"], inv_iter=s["inv_iter"])
    t0 = time.perf_counter()
    mapping = sdr.optimize(fixed.data.astype(np.float64), moving.data.astype(np.float64),
                           static_grid2world=fixed.grid.affine,
                           moving_grid2world=moving.grid.affine)
    seconds = time.perf_counter() - t0
    if not np.allclose(mapping.disp_grid2world, fixed.grid.affine, atol=1e-4):
        raise RuntimeError("dipy's displacement grid is not the fixed grid")
    disp = np.asarray(mapping.get_forward_field(), dtype=np.float64)
    write_displacement_field(os.path.join(out_dir, FIELD_FILE), disp.astype(np.float32),
                             fixed.grid)
    pts = _fixed_points(case)
    if pts is not None:
        moved = np.asarray(mapping.transform_points(pts), dtype=np.float64)
        save_points(os.path.join(out_dir, POINTS_FILE), moved)
    return seconds


# ------------------------------------------------------------------------ SimpleITK demons
def demons_settings(profile: str, ndim: int) -> dict:
    """SimpleITK diffeomorphic demons, multi-resolution, histogram matching first."""
    its = {"full": [100, 60, 30], "quick": [40, 20, 10], "test": [40, 20]}[profile]
    shrink = [4, 2, 1] if profile != "test" else [2, 1]
    return {"shrink_factors": shrink,
            "pyramid_sigmas_vox": [f / 2.0 if f > 1 else 0 for f in shrink],
            "iterations": its, "field_sigma_vox": 1.5, "update_sigma_vox": 1.0,
            "histogram_levels": 1024, "match_points": 7, "max_step_vox": 2.0}


def demons_describe(s: dict) -> str:
    return (f"DiffeomorphicDemons, histogram matching ({s['histogram_levels']} levels, "
            f"{s['match_points']} match points, threshold at mean), shrink {s['shrink_factors']} "
            f"x iterations {s['iterations']}, Gaussian smoothing of the field sigma "
            f"{s['field_sigma_vox']} vox and of the update sigma {s['update_sigma_vox']} vox, max "
            f"step {s['max_step_vox']} vox")


def demons_run(case: Case, out_dir: str, s: dict, use_mask: bool) -> float:
    """Multi-resolution diffeomorphic demons; the displacement field is on the fixed grid and
    maps fixed points to moving points (ITK convention); landmarks by
    ``DisplacementFieldTransform.TransformPoint``."""
    import SimpleITK as sitk

    fixed = sitk.ReadImage(case.fixed, sitk.sitkFloat32)
    moving = sitk.ReadImage(case.moving, sitk.sitkFloat32)
    t0 = time.perf_counter()
    moving = sitk.HistogramMatching(moving, fixed, numberOfHistogramLevels=s["histogram_levels"],
                                    numberOfMatchPoints=s["match_points"],
                                    thresholdAtMeanIntensity=True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(s["field_sigma_vox"])
    demons.SetSmoothUpdateField(True)
    demons.SetUpdateFieldStandardDeviations(s["update_sigma_vox"])
    demons.SetMaximumUpdateStepLength(s["max_step_vox"])
    demons.SetUseImageSpacing(False)
    field = None
    for factor, sigma, its in zip(s["shrink_factors"], s["pyramid_sigmas_vox"], s["iterations"]):
        f_l, m_l = fixed, moving
        if factor > 1:
            spacing = np.asarray(fixed.GetSpacing())
            f_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, list(sigma * spacing)),
                              [factor] * fixed.GetDimension())
            m_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, list(sigma * spacing)),
                              [factor] * moving.GetDimension())
        if field is None:
            init = sitk.Image(f_l.GetSize(), sitk.sitkVectorFloat64, f_l.GetDimension())
            init.CopyInformation(f_l)
        else:
            init = sitk.Resample(field, f_l, sitk.Transform(), sitk.sitkLinear, 0.0,
                                 sitk.sitkVectorFloat64)
        demons.SetNumberOfIterations(int(its))
        field = demons.Execute(f_l, m_l, init)
    seconds = time.perf_counter() - t0
    fixed_grid = load_image(case.fixed, "fixed image").grid
    save_sitk_field(os.path.join(out_dir, FIELD_FILE), field, fixed_grid)
    pts = _fixed_points(case)
    if pts is not None:
        tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        moved = np.array([tx.TransformPoint(tuple(p)) for p in ras_to_lps(pts)])
        save_points(os.path.join(out_dir, POINTS_FILE), ras_to_lps(moved))
    return seconds


PEERS = {
    "ants-syn-strong": Peer("ants-syn-strong", "ANTs SyN strong", "ants", True,
                            lambda p, d: ants_settings("strong", p, d), ants_describe, ants_run),
    "ants-syn-fast": Peer("ants-syn-fast", "ANTs SyN fast", "ants", True,
                          lambda p, d: ants_settings("fast", p, d), ants_describe, ants_run),
    "ants-syn-antspy": Peer("ants-syn-antspy", "ANTs SyN (ANTsPy defaults)", "ants", True,
                            antspy_settings, antspy_describe, antspy_run),
    "ants-syn-mi-100x70x50": Peer("ants-syn-mi-100x70x50", "ANTs SyN, MI, 100x70x50", "ants",
                                  True, lambda p, d: antspy_syn_settings("mattes", p, d),
                                  antspy_describe, antspy_run),
    "ants-syn-cc-100x70x50": Peer("ants-syn-cc-100x70x50", "ANTs SyN, CC, 100x70x50", "ants",
                                  True, lambda p, d: antspy_syn_settings("CC", p, d),
                                  antspy_describe, antspy_run),
    "elastix-bspline": Peer("elastix-bspline", "elastix B-spline", "itk", True,
                            elastix_settings, elastix_describe, elastix_run),
    "dipy-syn": Peer("dipy-syn", "dipy SyN", "dipy", False, dipy_settings, dipy_describe,
                     dipy_run),
    "sitk-demons": Peer("sitk-demons", "SimpleITK demons", "SimpleITK", False, demons_settings,
                        demons_describe, demons_run),
}

REFERENCE = "ants-syn-strong"
RECIPE_PEERS = ("ants-syn-mi-100x70x50", "ants-syn-cc-100x70x50")
"""The peers of the recipe benchmark (``benchmarks/bench_recipe.py``, issue 13);
``bench_peers.py`` runs them only when ``--methods`` names them."""


def peer_available(key: str) -> tuple:
    """(ok, reason) for a peer; elastix needs the itk package *with* the elastix module."""
    peer = PEERS[key]
    ok, reason = peer.available()
    if ok and key == "elastix-bspline" and importlib.util.find_spec("itk") is not None:
        try:
            from importlib import metadata

            metadata.version("itk-elastix")
        except metadata.PackageNotFoundError:
            return False, "itk-elastix is not installed (pip install -e '.[bench]')"
    return ok, reason


def icon_status() -> tuple:
    """(False, reason): GradICON / uniGradICON (icon-registration) need pretrained weights.

    icon-registration ships no weights: its pretrained models download them at run time, which
    this machine cannot do, and training a GradICON network from scratch is out of this
    benchmark's scope. Its reason is printed and written in the table.
    """
    if importlib.util.find_spec("icon_registration") is None:
        return False, ("icon-registration is not installed (optional: pip install --no-deps "
                       "icon-registration); it would also need pretrained weights")
    return False, ("icon-registration is installed but ships no weights: GradICON/uniGradICON "
                   "download them at run time and this machine has no network")


def run_peer(key: str, case: Case, out_dir: str, profile: str = "full",
             use_mask: bool = True) -> dict:
    """Run one peer on one case in this process; write ``method.json`` and return it."""
    peer = PEERS[key]
    settings = peer.settings(profile, case.ndim)
    os.makedirs(out_dir, exist_ok=True)
    masked = bool(use_mask and peer.supports_mask and case.fixed_mask)
    seconds = peer.run(case, out_dir, settings, masked)
    info = {"method": key, "reg_seconds": seconds, "settings": settings,
            "description": peer.describe(settings), "mask": masked,
            "version": _version(peer.module)}
    with open(os.path.join(out_dir, METHOD_FILE), "w") as fh:
        json.dump(info, fh, indent=2)
    return info


def main(argv=None) -> int:
    """Worker entry point: ``python -m benchmarks.methods METHOD CASE.json OUT_DIR``."""
    parser = argparse.ArgumentParser(description="Run one peer registration method on one case.")
    parser.add_argument("method", choices=sorted(PEERS))
    parser.add_argument("case", help="case JSON written by benchmarks/bench_peers.py")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--profile", choices=PROFILES, default="full")
    parser.add_argument("--no-mask", action="store_true", help="ignore the fixed mask")
    args = parser.parse_args(argv)
    info = run_peer(args.method, Case.from_json(args.case), args.out, args.profile,
                    not args.no_mask)
    print(f"{args.method}: registered in {info['reg_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
