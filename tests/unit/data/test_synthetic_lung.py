"""Tests of the synthetic lung CT pair generator (data_prep.synthetic_lung)."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from nephi.data.synthetic_lung import default_affine, make_lung_pair, voxel_centres

REPO = Path(__file__).resolve().parents[3]


def rotation(axis, degrees):
    """3x3 rotation matrix about a unit axis (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def oblique_affine(shape, spacing, rot):
    """Affine with voxel axes rotated by ``rot`` and the grid centred on the origin."""
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def sample(img, points, order=1):
    """Interpolate a NIfTI image at RAS mm points (N, 3) (trilinear by default)."""
    ijk = (np.linalg.inv(img.affine) @ np.c_[points, np.ones(len(points))].T)[:3]
    return map_coordinates(np.asarray(img.dataobj, dtype=np.float64), ijk, order=order,
                           mode="nearest")


def mask_volume_ml(img):
    return float(np.asarray(img.dataobj).sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000.0)


@pytest.fixture(scope="module")
def default_pair():
    return make_lung_pair()


@pytest.fixture(scope="module")
def clean_pair():
    return make_lung_pair(noise_hu=0.0)


def test_default_geometry_and_types(default_pair):
    pair = default_pair
    assert pair.inhale.shape == pair.exhale.shape == (64, 64, 64)
    np.testing.assert_allclose(pair.inhale.affine, default_affine((64,) * 3, (4.0,) * 3))
    np.testing.assert_allclose(voxel_centres((64,) * 3, pair.inhale.affine).mean(0), 0, atol=1e-9)
    assert pair.inhale.get_data_dtype() == np.float32
    assert pair.inhale_mask.get_data_dtype() == np.uint8
    assert pair.inhale_points.shape == pair.exhale_points.shape == (300, 3)
    assert pair.inhale_points.dtype == np.float64
    assert pair.landmark_is_branch.all()


def test_hu_ranges(clean_pair):
    img = np.asarray(clean_pair.inhale.dataobj)
    mask = np.asarray(clean_pair.inhale_mask.dataobj).astype(bool)
    assert -900 < np.median(img[mask]) < -700
    assert (img[mask] > -300).mean() > 0.02, "vessels should be visible inside the lungs"
    assert img.max() > 250, "bone should be present"
    faces = [img[0], img[-1], img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]]
    assert max(f.max() for f in faces) < -990, "the body must be surrounded by air"
    body = img > -500
    assert 0.15 < body.mean() < 0.6
    assert 0.8 < mask_volume_ml(clean_pair.inhale_mask) / 1000 < 3.0


def test_landmark_motion(default_pair):
    pair = default_pair
    disp = pair.exhale_points - pair.inhale_points
    length = np.linalg.norm(disp, axis=1)
    assert length.mean() >= 10.0
    assert (disp[:, 2] > 0).all(), "exhale moves the lungs superiorly"
    z = pair.inhale_points[:, 2]
    low, high = np.quantile(z, [1 / 3, 2 / 3])
    assert length[z < low].mean() > length[z > high].mean() + 2.0, "base moves more than apex"
    np.testing.assert_allclose(pair.displacement_fn(pair.inhale_points), disp, atol=1e-9)
    np.testing.assert_allclose(pair.motion.inverse(pair.exhale_points), pair.inhale_points,
                               atol=1e-3)


def test_landmarks_inside_lung_masks(default_pair):
    pair = default_pair
    for img, pts in ((pair.inhale_mask, pair.inhale_points),
                     (pair.exhale_mask, pair.exhale_points)):
        assert (sample(img, pts, order=0) == 1).all()
    assert (pair.anatomy.lung_sd(pair.inhale_points) < -3.0).all()
    distinct = np.unique(np.round(pair.inhale_points, 3), axis=0)
    assert len(distinct) == len(pair.inhale_points)


def patch_ncc(img_a, points_a, img_b, points_b, half_mm=6.0, n=5):
    """Normalised cross-correlation of n^3-sample patches (N,) centred on paired points."""
    axis = np.linspace(-half_mm, half_mm, n)
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    def patches(img, pts):
        values = sample(img, (pts[:, None, :] + offsets[None]).reshape(-1, 3))
        values = values.reshape(len(pts), -1)
        return values - values.mean(axis=1, keepdims=True)

    a, b = patches(img_a, points_a), patches(img_b, points_b)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-9)


def test_intensities_correspond_at_landmarks(clean_pair):
    pair = clean_pair
    at_inhale = sample(pair.inhale, pair.inhale_points)
    at_exhale = sample(pair.exhale, pair.exhale_points)
    unmoved = sample(pair.exhale, pair.inhale_points)
    assert at_inhale.std() > 50, "landmarks should sit on structure (vessel branch points)"
    matched = np.abs(at_exhale - at_inhale).mean()
    assert matched < 0.35 * np.abs(unmoved - at_inhale).mean()
    assert matched < 100.0, "only trilinear interpolation error on sharp vessel peaks remains"
    ncc = patch_ncc(pair.inhale, pair.inhale_points, pair.exhale, pair.exhale_points)
    ncc_unmoved = patch_ncc(pair.inhale, pair.inhale_points, pair.exhale, pair.inhale_points)
    assert ncc.mean() > 0.85
    assert np.median(ncc) > 0.85
    assert ncc_unmoved.mean() < 0.3


def test_analytic_correspondence_is_exact(clean_pair):
    pair = clean_pair
    anatomy, motion = pair.anatomy, pair.motion
    hu_in, _ = anatomy.evaluate(pair.inhale_points, 1.8)
    hu_ex, _ = anatomy.evaluate(motion.inverse(pair.exhale_points), 1.8)
    np.testing.assert_allclose(hu_ex, hu_in, atol=1e-3)
    ex_points = voxel_centres(pair.exhale.shape, pair.exhale.affine)[::997]
    rendered = np.asarray(pair.exhale.dataobj).reshape(-1)[::997]
    expected, _ = anatomy.evaluate(motion.inverse(ex_points), 1.8)
    np.testing.assert_allclose(rendered, expected, atol=1e-2)


def test_motion_is_invertible(default_pair):
    motion = default_pair.motion
    axis = np.linspace(-400.0, 400.0, 41)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    det = motion.jacobian_det(grid)
    assert det.min() > 0.5
    assert det.max() < 1.5
    inner = voxel_centres((32, 32, 32), default_affine((32,) * 3, (8.0,) * 3))
    assert np.abs(motion.forward(motion.inverse(inner)) - inner).max() < 1e-4
    exhale_mask = np.asarray(default_pair.exhale_mask.dataobj)
    inhale_mask = np.asarray(default_pair.inhale_mask.dataobj)
    assert 0.8 < exhale_mask.sum() / inhale_mask.sum() < 0.98, "exhale lungs are smaller"


def test_reproducible_and_seed_dependent():
    kwargs = dict(shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0), n_landmarks=50)
    a = make_lung_pair(seed=3, **kwargs)
    b = make_lung_pair(seed=3, **kwargs)
    c = make_lung_pair(seed=4, **kwargs)
    for name in ("inhale", "exhale", "inhale_mask", "exhale_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name).dataobj),
                                      np.asarray(getattr(b, name).dataobj))
    np.testing.assert_array_equal(a.inhale_points, b.inhale_points)
    np.testing.assert_array_equal(a.exhale_points, b.exhale_points)
    mask_a = np.asarray(a.inhale_mask.dataobj)
    mask_c = np.asarray(c.inhale_mask.dataobj)
    assert (mask_a != mask_c).sum() > 0.05 * mask_a.sum()
    assert a.motion.si_mm != c.motion.si_mm
    assert len(a.anatomy.tree.radius) > 0
    assert not np.allclose(a.anatomy.tree.end[:20], c.anatomy.tree.end[:20])


def test_oblique_and_anisotropic_grids_show_same_anatomy():
    shape, spacing = (40, 40, 40), (6.4, 6.4, 6.4)
    straight = make_lung_pair(shape, spacing, n_landmarks=40, noise_hu=0.0)
    rot = rotation([1.0, 2.0, 0.5], 17.0)
    oblique = make_lung_pair(shape, spacing, n_landmarks=40, noise_hu=0.0,
                             affine=oblique_affine(shape, spacing, rot))
    aniso = make_lung_pair((64, 64, 32), (4.0, 4.0, 8.0), n_landmarks=40, noise_hu=0.0)
    reference = mask_volume_ml(straight.inhale_mask)
    for pair in (oblique, aniso):
        assert abs(mask_volume_ml(pair.inhale_mask) / reference - 1) < 0.04
        assert abs(mask_volume_ml(pair.exhale_mask) / mask_volume_ml(straight.exhale_mask)
                   - 1) < 0.04
    np.testing.assert_allclose(oblique.inhale_points, straight.inhale_points)
    np.testing.assert_allclose(oblique.exhale_points, straight.exhale_points)
    for pair in (oblique, aniso):
        assert (sample(pair.inhale_mask, pair.inhale_points, order=0) == 1).all()
        assert (sample(pair.exhale_mask, pair.exhale_points, order=0) == 1).all()
    ijk = np.linalg.inv(oblique.inhale.affine) @ np.c_[straight.inhale_points, np.ones(40)].T
    assert np.abs(ijk[:3] - np.round(ijk[:3])).max() > 0.1, "grid really is different"


def test_separate_exhale_grid():
    shape, spacing = (40, 40, 40), (6.4, 6.4, 6.4)
    ex_shape = (48, 40, 36)
    ex_affine = oblique_affine(ex_shape, (5.0, 6.0, 7.0), rotation([0.0, 0.0, 1.0], -25.0))
    pair = make_lung_pair(shape, spacing, n_landmarks=60, noise_hu=0.0, exhale_shape=ex_shape,
                          exhale_affine=ex_affine)
    assert pair.exhale.shape == ex_shape
    np.testing.assert_allclose(pair.exhale.affine, ex_affine)
    np.testing.assert_allclose(pair.inhale.affine, default_affine(shape, spacing))
    assert (sample(pair.exhale_mask, pair.exhale_points, order=0) == 1).all()
    ratio = mask_volume_ml(pair.exhale_mask) / mask_volume_ml(pair.inhale_mask)
    assert 0.8 < ratio < 0.98


def test_small_field_of_view_scales_anatomy():
    pair = make_lung_pair((32, 32, 32), (4.0, 4.0, 4.0), n_landmarks=30, noise_hu=0.0)
    img = np.asarray(pair.inhale.dataobj)
    faces = [img[0], img[-1], img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]]
    assert max(f.max() for f in faces) < -990
    volume = mask_volume_ml(pair.inhale_mask)
    assert 0.08 < volume / 1000 < 0.4, "lungs scale with the field of view (1/8 of default)"


def test_few_branch_points_fall_back_to_centrelines():
    pair = make_lung_pair((32, 32, 32), (8.0, 8.0, 8.0), n_landmarks=700, noise_hu=0.0)
    assert len(pair.inhale_points) == 700
    assert pair.landmark_is_branch.any() and not pair.landmark_is_branch.all()
    assert pair.landmark_is_branch[: pair.landmark_is_branch.sum()].all()
    assert (sample(pair.inhale_mask, pair.inhale_points, order=0) == 1).all()


def test_save_and_cli(tmp_path, default_pair):
    paths = default_pair.save(tmp_path / "pair")
    assert sorted(Path(p).name for p in paths.values()) == sorted([
        "inhale.nii.gz", "exhale.nii.gz", "inhale_mask.nii.gz", "exhale_mask.nii.gz",
        "inhale_points.csv", "exhale_points.csv"])
    img = nib.load(paths["exhale"])
    np.testing.assert_allclose(img.affine, default_pair.exhale.affine)
    assert img.get_data_dtype() == np.float32
    assert nib.load(paths["inhale_mask"]).get_data_dtype() == np.uint8
    lines = Path(paths["inhale_points"]).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "x,y,z"
    assert len(lines) == 301
    assert all(len(v.split(".")[1]) == 4 for v in lines[1].split(","))
    loaded = np.loadtxt(paths["exhale_points"], delimiter=",", skiprows=1)
    np.testing.assert_allclose(loaded, default_pair.exhale_points, atol=6e-5)

    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.synthetic_lung", "--out", str(out), "--shape", "24",
         "24", "24", "--spacing", "10", "10", "10", "--motion-mm", "15", "--seed", "2"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert len(result.stdout.strip().splitlines()) == 1
    assert "mean displacement" in result.stdout
    assert nib.load(out / "inhale.nii.gz").shape == (24, 24, 24)
    assert len((out / "exhale_points.csv").read_text(encoding="utf-8").splitlines()) == 301
