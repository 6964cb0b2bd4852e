"""nephi-jacobian: det(I + D d) of any ITK displacement field, checked against analytic fields
and against ANTs' CreateJacobianDeterminantImage."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from helpers_results import assert_input_error, ncc, nifti_array, run_main
from nephi.cli.jacobian import main as jacobian_main
from nephi.geometry.grid import Grid
from nephi.io.fields import read_field, write_displacement_field
from nephi.io.images import grid_of
from nephi.results.jacobian import field_jacobian, log_jacobian
from nephi.results.metrics import folding_percent
from nephi.transforms.displacement import Field

try:
    import ants
except ImportError:  # pragma: no cover - depends on the environment
    ants = None

needs_ants = pytest.mark.skipif(
    ants is None, reason="antspyx is not installed (pip install 'nephi[interop]')")

SHAPE = (20, 20, 20)
SPACING = (1.0, 2.0, 3.0)

# Measured max |nephi - ANTs| on the interior (2 voxels from the border) for smooth_field on
# oblique_grid(): 5.11e-3 (det range 0.85..1.15). nephi uses 3-point central differences,
# ANTs a 5-point stencil (its error against the analytic det is about 1e-4 there), so the
# difference is nephi's O(h^2) truncation error. At the border the stencils differ more
# (one-sided vs ANTs' own boundary handling: up to 0.24).
ANTS_TOL = 6e-3


def oblique_grid(shape=SHAPE, spacing=SPACING, degrees=25.0) -> Grid:
    """A grid rotated about two axes, anisotropic spacing, centred near the origin."""
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    b = a / 2.0
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + [3.0, -2.0, 5.0]
    return Grid(shape, affine)


def voxel_ras(grid: Grid) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    return grid.index_to_ras_points(idx.reshape(-1, grid.ndim).astype(np.float64))


def smooth_field(grid: Grid) -> np.ndarray:
    """A smooth nonlinear displacement (one sine period across the grid, up to 2.5 mm)."""
    p = voxel_ras(grid)
    extent = np.asarray(grid.shape) * grid.spacing
    disp = np.stack([2.0 * np.sin(2 * np.pi * p[:, 1] / extent[1]),
                     1.5 * np.cos(2 * np.pi * p[:, 2] / extent[2])
                     * np.sin(2 * np.pi * p[:, 0] / extent[0]),
                     2.5 * np.sin(2 * np.pi * (p[:, 0] + p[:, 1]) / (extent[0] + extent[1]))],
                    axis=-1)
    return disp.reshape(*grid.shape, 3)


def jacobian(capsys, field, out, *extra) -> tuple:
    code, stdout, err = run_main(jacobian_main, [field, "--out", out, *extra], capsys)
    assert code == 0, err
    return nifti_array(out), stdout


# ----------------------------------------------------------------------------- analytic
LINEAR_A3 = np.array([[0.10, -0.05, 0.02], [0.03, -0.08, 0.06], [-0.04, 0.07, 0.12]])
LINEAR_A2 = np.array([[0.15, -0.07], [0.04, -0.11]])


def test_linear_field_on_oblique_anisotropic_grid_gives_det_of_i_plus_a(tmp_path, capsys):
    """d(p) = A p in RAS mm: D phi = I + A everywhere, whatever the grid's orientation and
    spacing (np.gradient is exact on linear data, also at the border)."""
    grid = oblique_grid()
    disp = (voxel_ras(grid) @ LINEAR_A3.T).reshape(*SHAPE, 3)
    expected = np.linalg.det(np.eye(3) + LINEAR_A3)
    det = field_jacobian(Field(disp, grid))
    assert det.shape == SHAPE
    np.testing.assert_allclose(det, expected, atol=1e-10)
    # through the file (float32 LPS) and the command
    path = tmp_path / "linear.nii.gz"
    write_displacement_field(str(path), disp, grid)
    np.testing.assert_allclose(field_jacobian(read_field(str(path))), expected, atol=1e-6)
    out, stdout = jacobian(capsys, path, tmp_path / "jac.nii.gz")
    assert nib.load(tmp_path / "jac.nii.gz").get_data_dtype() == np.float32
    assert grid_of(str(tmp_path / "jac.nii.gz")).same_as(grid, tol=1e-6)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert stdout.count("\n") == 1 and "folding 0%" in stdout
    out, _ = jacobian(capsys, path, tmp_path / "logjac.nii.gz", "--log")
    np.testing.assert_allclose(out, np.log(expected), atol=1e-6)


def test_linear_field_2d(tmp_path, capsys):
    a = np.deg2rad(30.0)
    affine = np.eye(3)
    affine[:2, :2] = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag(
        [1.0, 2.5])
    affine[:2, 2] = [-9.0, -20.0]
    grid = Grid((20, 16), affine)
    disp = (voxel_ras(grid) @ LINEAR_A2.T).reshape(20, 16, 2)
    expected = np.linalg.det(np.eye(2) + LINEAR_A2)
    path = tmp_path / "linear2d.nii.gz"
    write_displacement_field(str(path), disp, grid)
    out, _ = jacobian(capsys, path, tmp_path / "jac2d.nii.gz")
    assert out.shape == (20, 16)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_fold_gives_nonpositive_det_and_nan_log(tmp_path, capsys):
    """d = (k x g(p), 0, 0) with a Gaussian bump g (sigma 6 mm) and k = -2: at the bump's
    centre D phi = diag(1 - 2, 1, 1), det = -1 (a fold); far from it det -> 1."""
    grid = oblique_grid()
    centre = grid.index_to_ras_points(((np.asarray(SHAPE) - 1) / 2.0)[None])[0]
    q = voxel_ras(grid) - centre
    bump = np.exp(-np.sum(q ** 2, axis=1) / (2 * 6.0 ** 2))
    disp = np.zeros_like(q)
    disp[:, 0] = -2.0 * q[:, 0] * bump
    disp = disp.reshape(*SHAPE, 3)
    path = tmp_path / "fold.nii.gz"
    write_displacement_field(str(path), disp, grid)
    det, stdout = jacobian(capsys, path, tmp_path / "jac.nii.gz")
    logdet, _ = jacobian(capsys, path, tmp_path / "log.nii.gz", "--log")
    middle = tuple(n // 2 for n in SHAPE)
    assert det[middle] <= 0
    folded = det <= 0
    assert 0 < folded.mean() < 0.5
    assert np.all(np.isnan(logdet[folded]))
    assert np.all(np.isfinite(logdet[~folded]))
    np.testing.assert_allclose(logdet[~folded], np.log(det[~folded]), atol=1e-5)
    assert f"folding {folding_percent(det):.3g}%" in stdout
    # the library: NaN exactly at det <= 0, zero included
    np.testing.assert_array_equal(np.isnan(log_jacobian(np.array([-1.0, 0.0, 1e-9, 2.0]))),
                                  [True, True, False, False])


# ----------------------------------------------------------------------------- ANTs
def ants_domain(grid: Grid, path) -> "ants.ANTsImage":
    nib.save(nib.Nifti1Image(np.zeros(grid.shape, np.float32), grid.nifti_affine), path)
    return ants.image_read(str(path))


@needs_ants
def test_agrees_with_ants_on_a_smooth_field(tmp_path, capsys):
    grid = oblique_grid()
    path = tmp_path / "smooth.nii.gz"
    write_displacement_field(str(path), smooth_field(grid), grid)
    ours, _ = jacobian(capsys, path, tmp_path / "jac.nii.gz")
    theirs = ants.create_jacobian_determinant_image(
        ants_domain(grid, tmp_path / "domain.nii.gz"), str(path), do_log=False).numpy()
    assert theirs.shape == ours.shape == SHAPE
    assert ours.min() < 0.9 and ours.max() > 1.1  # a real deformation
    interior = (slice(2, -2),) * 3
    diff = np.abs(ours[interior] - theirs[interior]).max()
    assert diff < ANTS_TOL, diff


@needs_ants
def test_reads_an_ants_syn_warp(tmp_path, capsys):
    """The forward warp ANTs' SyN writes is read as is; nephi and ANTs agree on it (its
    rougher field makes the stencils differ more than on smooth_field: correlation)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random(SHAPE), 2.0).astype(np.float32)
    moving = ndimage.shift(fixed, (1.0, 0.5, 0.0), order=1)
    fi = ants.from_numpy(fixed, spacing=SPACING)
    mi = ants.from_numpy(moving, spacing=SPACING)
    warp = ants.registration(fi, mi, type_of_transform="SyN", reg_iterations=(20, 10),
                             outprefix=str(tmp_path / "ants_"))["fwdtransforms"][0]
    assert os.path.basename(warp).endswith("Warp.nii.gz")
    ours, _ = jacobian(capsys, warp, tmp_path / "jac.nii.gz")
    np.testing.assert_allclose(ours, field_jacobian(read_field(warp)), atol=1e-6)
    theirs = ants.create_jacobian_determinant_image(fi, warp, do_log=False).numpy()
    interior = (slice(2, -2),) * 3
    assert ncc(ours[interior], theirs[interior]) > 0.98


# ----------------------------------------------------------------------------- command line
def test_result_folder_uses_its_warp(tmp_path, capsys):
    grid = oblique_grid()
    folder = tmp_path / "result"
    folder.mkdir()
    write_displacement_field(str(folder / "warp.nii.gz"), smooth_field(grid), grid)
    from_folder, stdout = jacobian(capsys, folder, tmp_path / "a.nii.gz")
    from_file, _ = jacobian(capsys, folder / "warp.nii.gz", tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(from_folder, from_file)
    assert stdout.startswith("nephi-jacobian: wrote") and "min" in stdout and "max" in stdout


def test_true_motion_result_matches_its_exact_jacobian(truth, tmp_path, capsys):
    """The truth result folder's warp.nii.gz (32^3 at 8 mm) against its exact det (its
    jacobian.nii.gz): measured max difference 1.2e-3 inside, 5.6e-3 with the border."""
    ours, _ = jacobian(capsys, truth["out"], tmp_path / "jac.nii.gz")
    exact = nifti_array(os.path.join(truth["out"], "jacobian.nii.gz"))
    interior = (slice(1, -1),) * 3
    assert np.abs(ours[interior] - exact[interior]).max() < 2e-3
    assert np.abs(ours - exact).max() < 1e-2


def test_bad_inputs_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    assert_input_error(jacobian_main, [tmp_path / "nope.nii.gz", "--out", out], capsys,
                       "nope.nii.gz", "not found")
    scalar = tmp_path / "scalar.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), scalar)
    assert_input_error(jacobian_main, [scalar, "--out", out], capsys, "scalar.nii.gz",
                       "not an ITK displacement field")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    assert_input_error(jacobian_main, [text, "--out", out], capsys, "notes.txt")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert_input_error(jacobian_main, [empty, "--out", out], capsys, "empty_folder",
                       "warp.nii.gz")
    grid = oblique_grid()
    field = tmp_path / "f.nii.gz"
    write_displacement_field(str(field), smooth_field(grid), grid)
    assert_input_error(jacobian_main, [field, "--out", tmp_path / "x.png"], capsys, ".nii")
    assert_input_error(jacobian_main, [field], capsys, "--out")
    assert not out.exists() and not (tmp_path / "x.png").exists()
