"""nephi's exported transforms, checked with real ITK tools (SimpleITK and ANTsPy).

A registration runs once per geometry case on a pair whose two images differ in shape, spacing
and orientation (axes permuted and flipped; an oblique, rotated moving grid; a 2-D case). Its
outputs are then applied by the tools themselves:

* warp.nii.gz / transform.h5 resample the moving image onto the fixed grid exactly as nephi's own
  warped.nii.gz (NCC >= 0.999 where the fixed image has signal and the mapped point lies in the
  moving image; the identity transform scores far lower, so the criterion can fail);
* fixed points map to the same moving points in nephi (landmarks_moving.csv), SimpleITK and ANTs;
* inverse_warp.nii.gz / inverse_transform.h5 bring them back, as well as the registration's
  inverse consistency allows.

Skipped, with the reason shown by ``pytest -rs``, when SimpleITK or antspyx is not installed
(``pip install nephi[interop]``).
"""

from __future__ import annotations

import json
import os

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from helpers_interop import Phantom, centred_grid, ncc, rotation, rotation_2d, save_nifti
from nephi.config.loader import load_defaults, set_dotted
from nephi.io.fields import read_displacement_field
from nephi.geometry.grid import Grid, lps_to_ras, ras_to_lps
from nephi.io.points import load_points, save_points
from nephi.io.itk import read_displacement_h5, write_displacement_h5
from nephi.transforms.displacement import map_points
from nephi.pipeline.pairwise import LoadedPair, register

pytestmark = pytest.mark.slow

try:
    import SimpleITK as sitk
except ImportError:  # pragma: no cover - depends on the environment
    sitk = None
try:
    import ants
except ImportError:  # pragma: no cover - depends on the environment
    ants = None

needs_sitk = pytest.mark.skipif(
    sitk is None, reason="SimpleITK is not installed (pip install 'nephi[interop]')")
needs_ants = pytest.mark.skipif(
    ants is None, reason="antspyx is not installed (pip install 'nephi[interop]')")

NCC_MIN = 0.999
POINT_TOL_MM = 0.1

# One registration per case: (fixed grid, moving grid, how the moving anatomy is displaced).
# The moving image shows the same phantom seen through y -> matrix @ y + offset (mm).
CASES = {
    # fixed RAS-aligned 3 x 3.5 x 4 mm; moving 2.5 mm isotropic with its voxel axes along
    # (-A, +S, -R): permuted and flipped.
    "permuted": dict(
        fixed=centred_grid((28, 24, 20), np.diag([3.0, 3.5, 4.0]), (0.0, 0.0, 0.0)),
        moving=centred_grid((36, 36, 36),
                            np.array([[0.0, 0.0, -2.5], [-2.5, 0.0, 0.0], [0.0, 2.5, 0.0]]),
                            (2.0, -1.0, 1.0)),
        matrix=1.05 * rotation((0, 0, 1), 6.0), offset=(4.0, -3.0, 3.0), extent=30.0),
    # both grids oblique: fixed 3 x 3.5 x 4 mm rotated 12 degrees, moving 2.5 mm isotropic
    # rotated 18 degrees about another axis.
    "oblique": dict(
        fixed=centred_grid((28, 24, 20), rotation((0.3, 1, 0.2), 12.0) @ np.diag([3.0, 3.5, 4.0]),
                           (5.0, -10.0, 20.0)),
        moving=centred_grid((36, 36, 36), rotation((1, 2, 3), 18.0) * 2.5, (7.0, -12.0, 21.0)),
        matrix=0.97 * rotation((1, 0, 1), -5.0), offset=(-3.0, 4.0, -2.0), extent=30.0,
        centre=(5.0, -10.0, 20.0)),
    # 2-D: fixed 1.5 x 2 mm RAS-aligned; moving 1.75 mm, rotated 20 degrees with y flipped.
    "2d": dict(
        fixed=centred_grid((64, 56), np.diag([1.5, 2.0]), (0.0, 0.0)),
        moving=centred_grid((70, 70), rotation_2d(20.0) @ np.diag([1.75, -1.75]), (1.0, 2.0)),
        matrix=1.04 * rotation_2d(5.0), offset=(3.0, -2.0), extent=35.0),
}


def small_config() -> dict:
    cfg = load_defaults("pairwise")
    for key, value in [("optim.steps", 40), ("optim.points", 2048), ("optim.reg_points", 256),
                       ("optim.lr", 3.0e-4), ("model.hidden", 128), ("device", "cpu"),
                       ("seed", 0)]:
        cfg = set_dotted(cfg, key, value)
    return cfg


def interior_points(grid: Grid, count: int, margin: float, seed: int = 0) -> np.ndarray:
    """``count`` random RAS points at least ``margin`` voxels inside ``grid``."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(margin, np.asarray(grid.shape, dtype=np.float64) - 1.0 - margin,
                      size=(count, grid.ndim))
    return grid.index_to_ras_points(idx)


def inside(grid: Grid, points_ras: np.ndarray) -> np.ndarray:
    idx = grid.ras_to_index_points(points_ras)
    return np.all((idx >= 0.0) & (idx <= np.asarray(grid.shape) - 1.0), axis=-1)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """Register one synthetic pair in-process; returns paths, grids and the summary."""
    if sitk is None and ants is None:
        pytest.skip("neither SimpleITK nor antspyx is installed (pip install 'nephi[interop]')")
    spec = CASES[request.param]
    root = tmp_path_factory.mktemp(f"interop_{request.param}")
    fixed_grid, moving_grid = spec["fixed"], spec["moving"]
    d = fixed_grid.ndim
    centre = np.asarray(spec.get("centre", np.zeros(d)), dtype=np.float64)
    anatomy = Phantom(d, spec["extent"], seed=1)
    anatomy = anatomy.moved(np.eye(d), -centre)  # blobs around the fixed image's centre
    # moving(y) = fixed anatomy at matrix @ (y - centre) + centre + offset
    moving_anatomy = anatomy.moved(spec["matrix"],
                                   centre - spec["matrix"] @ centre + np.asarray(spec["offset"]))
    paths = {name: str(root / f"{name}.nii.gz") for name in ("fixed", "moving")}
    save_nifti(paths["fixed"], anatomy.render(fixed_grid), fixed_grid)
    save_nifti(paths["moving"], moving_anatomy.render(moving_grid), moving_grid)
    landmarks = interior_points(fixed_grid, 50, margin=1.5)
    paths["landmarks"] = str(root / "landmarks.csv")
    save_points(paths["landmarks"], landmarks)

    out = str(root / "result")
    # One thread: on a small problem and a busy 2-core machine, torch's thread pool costs up
    # to 10x (measured); the result does not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = LoadedPair(paths["moving"], paths["fixed"], landmarks=paths["landmarks"])
        summary = register(pair, out, small_config(), command=["test_interop"], progress=False)
    finally:
        torch.set_num_threads(threads)
    files = {name: os.path.join(out, name) for name in (
        "warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "transform.h5",
        "inverse_transform.h5", "landmarks_moving.csv", "summary.json")}
    for name, path in files.items():
        assert os.path.isfile(path), f"register() did not write {name}"
    with open(files["summary.json"], encoding="utf-8") as fh:
        assert json.load(fh)["inverse_consistency_mm_p95"] == summary["inverse_consistency_mm_p95"]

    disp, grid = read_displacement_field(files["warp.nii.gz"])
    assert grid.same_as(fixed_grid)
    vox = np.stack(np.meshgrid(*[np.arange(n) for n in fixed_grid.shape], indexing="ij"), -1)
    fixed_pts = fixed_grid.index_to_ras_points(vox.reshape(-1, d).astype(np.float64))
    mapped = fixed_pts + disp.reshape(-1, d)
    fixed_data = np.asarray(pair.fixed.data)
    region = (fixed_data > 0.1 * fixed_data.max()) & inside(moving_grid, mapped).reshape(
        fixed_grid.shape)
    warped = np.asarray(nib.load(files["warped.nii.gz"]).dataobj, dtype=np.float64)
    return dict(name=request.param, paths=paths, files=files, summary=summary, ndim=d,
                fixed_grid=fixed_grid, moving_grid=moving_grid, landmarks=landmarks,
                disp=disp, region=region, warped=warped.reshape(fixed_grid.shape))


def test_registration_is_nontrivial(case):
    """The exported fields must move things by several mm, or the checks below prove little."""
    size = np.linalg.norm(case["disp"], axis=-1)
    assert size.mean() > 2.0, f"mean displacement {size.mean():.2f} mm: registration too weak"
    assert case["region"].mean() > 0.1, "too few voxels in the comparison region"


# ----------------------------------------------------------------------------- SimpleITK
def sitk_array(img) -> np.ndarray:
    """SimpleITK image -> numpy in nibabel's (X, Y[, Z]) axis order."""
    return sitk.GetArrayFromImage(img).transpose()


def sitk_resample(case, transform) -> np.ndarray:
    fixed = sitk.ReadImage(case["paths"]["fixed"])
    moving = sitk.ReadImage(case["paths"]["moving"])
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk_array(out)


def sitk_field_transform(path):
    field = sitk.ReadImage(path)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def assert_matches_warped(case, resampled: np.ndarray, what: str):
    region = case["region"]
    value = ncc(resampled[region], case["warped"][region])
    assert value >= NCC_MIN, f"{case['name']}: {what} gives NCC {value:.5f} with warped.nii.gz"


@needs_sitk
def test_sitk_reads_warp_nifti_as_itk_field(case):
    field = sitk.ReadImage(case["files"]["warp.nii.gz"])
    d = case["ndim"]
    assert field.GetDimension() == d
    assert field.GetNumberOfComponentsPerPixel() == d
    assert field.GetSize() == case["fixed_grid"].shape
    fixed = sitk.ReadImage(case["paths"]["fixed"])
    np.testing.assert_allclose(field.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(field.GetSpacing(), fixed.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(field.GetDirection(), fixed.GetDirection(), atol=1e-5)
    # raw file layout of the DESIGN contract: (X, Y, Z, 1, 3) / (X, Y, 1, 1, 2), intent vector
    img = nib.load(case["files"]["warp.nii.gz"])
    shape = case["fixed_grid"].shape
    assert img.shape == ((*shape, 1, 3) if d == 3 else (*shape, 1, 1, 2))
    assert img.header.get_intent()[0] == "vector"
    assert img.get_data_dtype() == np.float32


@needs_sitk
def test_sitk_resamples_like_warped_with_warp_nifti(case):
    resampled = sitk_resample(case, sitk_field_transform(case["files"]["warp.nii.gz"]))
    assert_matches_warped(case, resampled, "SimpleITK + warp.nii.gz")
    # the criterion discriminates: without the field the match is far worse
    identity = sitk_resample(case, sitk.Transform(case["ndim"], sitk.sitkIdentity))
    region = case["region"]
    assert ncc(identity[region], case["warped"][region]) < 0.99


@needs_sitk
def test_sitk_resamples_like_warped_with_transform_h5(case):
    transform = sitk.ReadTransform(case["files"]["transform.h5"])
    assert transform.GetName() == "DisplacementFieldTransform"
    assert_matches_warped(case, sitk_resample(case, transform), "SimpleITK + transform.h5")


def sitk_map(transform, points_ras: np.ndarray) -> np.ndarray:
    """Map RAS points with an ITK transform (which works in LPS)."""
    lps = ras_to_lps(points_ras)
    return lps_to_ras(np.array([transform.TransformPoint(tuple(float(v) for v in p))
                                for p in lps]))


@needs_sitk
def test_landmarks_agree_with_sitk(case):
    nephi_csv = load_points(case["files"]["landmarks_moving.csv"], case["ndim"])
    nephi_map = map_points(case["landmarks"], case["disp"], case["fixed_grid"])
    np.testing.assert_allclose(nephi_csv, nephi_map, atol=1e-3)  # CSV holds 4 decimals
    for name in ("warp.nii.gz", "transform.h5"):
        transform = (sitk_field_transform(case["files"][name]) if name.endswith(".nii.gz")
                     else sitk.ReadTransform(case["files"][name]))
        theirs = sitk_map(transform, case["landmarks"])
        err = np.linalg.norm(theirs - nephi_csv, axis=1).max()
        assert err < POINT_TOL_MM, f"{case['name']}: SimpleITK + {name} maps landmarks " \
                                   f"{err:.3f} mm away from landmarks_moving.csv"


@needs_sitk
def test_inverse_warp_brings_points_back(case):
    """fixed -> moving with warp, back with inverse_warp: within the registration's own inverse
    consistency (summary inverse_consistency_mm_p95)."""
    bound = 2.0 * case["summary"]["inverse_consistency_mm_p95"] + 0.1
    forward = sitk_field_transform(case["files"]["warp.nii.gz"])
    for name in ("inverse_warp.nii.gz", "inverse_transform.h5"):
        backward = (sitk_field_transform(case["files"][name]) if name.endswith(".nii.gz")
                    else sitk.ReadTransform(case["files"][name]))
        moved = sitk_map(forward, case["landmarks"])
        keep = inside(case["moving_grid"], moved)
        assert keep.mean() > 0.8
        back = sitk_map(backward, moved[keep])
        err = np.linalg.norm(back - case["landmarks"][keep], axis=1)
        assert np.percentile(err, 95) < bound, (
            f"{case['name']}: round trip through {name}: p95 {np.percentile(err, 95):.3f} mm, "
            f"bound {bound:.3f} mm")
        assert err.max() < 2.0 * bound
    # nephi's reader of the inverse field agrees with the NIfTI one
    d_nii, g_nii = read_displacement_field(case["files"]["inverse_warp.nii.gz"])
    d_h5, g_h5 = read_displacement_h5(case["files"]["inverse_transform.h5"])
    assert g_nii.same_as(case["moving_grid"]) and g_h5.same_as(case["moving_grid"], 1e-6)
    np.testing.assert_allclose(d_h5, d_nii, atol=1e-5)


# ----------------------------------------------------------------------------- ANTs
def ants_points(points_ras: np.ndarray):
    import pandas as pd
    names = ["x", "y", "z"][: points_ras.shape[1]]
    return pd.DataFrame(ras_to_lps(points_ras), columns=names)


@needs_ants
def test_ants_resamples_like_warped(case):
    fixed = ants.image_read(case["paths"]["fixed"])
    moving = ants.image_read(case["paths"]["moving"])
    for name in ("warp.nii.gz", "transform.h5"):
        out = ants.apply_transforms(fixed, moving, transformlist=[case["files"][name]],
                                    interpolator="linear", defaultvalue=0)
        assert out.numpy().shape == case["fixed_grid"].shape
        assert_matches_warped(case, out.numpy(), f"ANTs apply_transforms + {name}")


@needs_ants
def test_landmarks_agree_with_ants(case):
    # ANTs' convention: the transform list that warps the moving image onto the fixed grid
    # (here [warp.nii.gz], exactly as passed to apply_transforms) maps points the OTHER way
    # round relative to images: it takes FIXED-space points to MOVING-space points (p + d(p)).
    # So landmarks_moving.csv corresponds to applying the forward list, whichtoinvert unset;
    # sending moving points to fixed space would need the inverse (inverse_warp.nii.gz).
    # Points are LPS in ANTs.
    d = case["ndim"]
    nephi_csv = load_points(case["files"]["landmarks_moving.csv"], d)
    for name in ("warp.nii.gz", "transform.h5"):
        out = ants.apply_transforms_to_points(d, ants_points(case["landmarks"]),
                                              [case["files"][name]])
        theirs = lps_to_ras(out[["x", "y", "z"][:d]].to_numpy(dtype=np.float64))
        err = np.linalg.norm(theirs - nephi_csv, axis=1).max()
        assert err < POINT_TOL_MM, f"{case['name']}: ANTs + {name} maps landmarks {err:.3f} " \
                                   f"mm away from landmarks_moving.csv"


# ----------------------------------------------------------------------------- .h5 layout
@needs_sitk
@pytest.mark.parametrize("ndim", [2, 3])
def test_h5_layout_matches_simpleitk(tmp_path, ndim):
    """Our .h5 has SimpleITK's datasets, dtypes and string types, and both read each other."""
    rng = np.random.default_rng(ndim)
    shape = (5, 4, 3)[:ndim]
    columns = (rotation((1, -1, 2), 25.0) if ndim == 3 else rotation_2d(-30.0)) \
        @ np.diag([1.5, 2.0, 2.5][:ndim])
    grid = centred_grid(shape, columns, (3.0, -7.0, 11.0)[:ndim])
    disp = rng.normal(size=(*shape, ndim))
    ours = str(tmp_path / "ours.h5")
    write_displacement_h5(ours, disp, grid)
    transform = sitk.DisplacementFieldTransform(sitk.ReadTransform(ours))
    reference = str(tmp_path / "sitk.h5")
    sitk.WriteTransform(transform, reference)

    def describe(path):
        out = {}
        with h5py.File(path, "r") as h5:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    t = obj.id.get_type()
                    kind = ((t.get_cset(), t.get_strpad(), t.is_variable_str())
                            if obj.dtype.kind == "O" else str(obj.dtype))
                    out[name] = (obj.shape, kind, dict(obj.attrs), obj.chunks, obj.compression)
                else:
                    out[name] = "group"
            h5.visititems(visit)
            out["/version"] = h5.id.get_create_plist().get_version()[0]  # superblock
            strings = {k: h5[k][()][0] for k in ("TransformGroup/0/TransformType",)}
            params = {k: h5[f"TransformGroup/0/{k}"][()]
                      for k in ("TransformFixedParameters", "TransformParameters")}
        return out, strings, params

    a, b = describe(ours), describe(reference)
    assert a[0] == b[0]
    assert a[1] == b[1] == {"TransformGroup/0/TransformType":
                            f"DisplacementFieldTransform_double_{ndim}_{ndim}".encode()}
    for key in a[2]:
        np.testing.assert_allclose(a[2][key], b[2][key], rtol=0, atol=1e-12)
    back, back_grid = read_displacement_h5(reference)
    assert back_grid.same_as(grid, 1e-9)
    np.testing.assert_allclose(back, disp, atol=1e-12)
    # point mapping: ITK's p + d(p) (LPS) equals nephi's map_points (RAS)
    pts = interior_points(grid, 20, margin=0.2, seed=ndim)
    np.testing.assert_allclose(sitk_map(transform, pts), map_points(pts, disp, grid), atol=1e-9)
