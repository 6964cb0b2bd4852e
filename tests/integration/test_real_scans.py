"""Pairs built from a real scan (nilearn's MNI152 head, as MRI and as CT): the known map is
right, a rigid motion of 15 degrees and 20.8 mm alone is recovered by the affine stage, and a
deformation on top of that motion is registered as well as without it."""

import numpy as np
import pytest
from scipy import ndimage

import nephi
from nephi.data.real_scans import head_ct, make_pair, mni152, rigid_motion
from nephi.transforms.affine import Affine


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("nilearn") is None,
                                 reason="nilearn (MNI152 template) is not installed")]

SPACING = 3.0
SHIFT = (12.0, -11.0, 13.0)  # 20.8 mm
FAST = {"model": {"hidden": 64}, "optim": {"steps": 250, "points": 1024, "reg_points": 256},
        "device": "cpu"}


@pytest.fixture(scope="module")
def scans():
    mri = mni152(SPACING)
    return {"mri": mri, "ct": head_ct(mri)}


def values_at(image, grid, points):
    return ndimage.map_coordinates(image, grid.ras_to_index_points(points).T, order=3)


def test_the_scans_look_like_mri_and_ct(scans):
    mri, ct = scans["mri"], scans["ct"]
    assert 50 <= min(mri.grid.shape) and max(mri.grid.shape) <= 80
    assert set(np.unique(mri.labels)) == {0, 1, 2, 3}
    brain = ct.image[mri.labels == 3]
    assert abs(np.median(brain) - 28.0) < 5.0 and ct.image.min() < -990
    assert (ct.image > 700).mean() > 0.02  # a skull
    assert np.median(mri.image[mri.labels == 3]) > np.median(mri.image[mri.labels == 2])


@pytest.mark.parametrize("kind", ["mri", "ct"])
def test_the_known_map_relates_the_images(scans, kind):
    """Moving intensities at the moving landmarks equal fixed intensities at the fixed ones."""
    pair = make_pair(scans[kind], 8.0, seed=4, degrees=15.0, shift_mm=SHIFT, n_landmarks=150)
    assert len(pair.fixed_points) == 150
    moved = np.linalg.norm(pair.fixed_points - pair.moving_points, axis=1)
    assert moved.mean() > 10.0
    a = values_at(pair.fixed, pair.fixed_grid, pair.fixed_points)
    b = values_at(pair.moving, pair.moving_grid, pair.moving_points)
    assert np.corrcoef(a, b)[0, 1] > 0.97, np.corrcoef(a, b)


@pytest.mark.parametrize("kind", ["mri", "ct"])
def test_rigid_motion_alone_is_recovered_by_the_affine_stage(scans, kind, tmp_path):
    scan = scans[kind]
    paths = make_pair(scan, 0.0, seed=5, degrees=15.0, shift_mm=SHIFT).save(tmp_path)
    result = nephi.register(paths["moving"], paths["fixed"], mask=paths["fixed_mask"],
                            overrides={"align": {"only": True}, "device": "cpu"})
    true = rigid_motion(scan.grid, 15.0, SHIFT)
    residual = Affine(np.linalg.inv(true) @ result.affine.matrix).parts()
    assert residual["rotation_deg"] < 0.5, residual
    brain = scan.grid.index_to_ras_points(np.argwhere(scan.mask).astype(float))
    error = np.linalg.norm(result.affine(brain) - Affine(true)(brain), axis=1)
    assert error.max() < 0.5, error.max()
    assert abs(result.summary["align"]["rotation_deg"] - 15.0) < 0.5


def test_a_deformation_on_top_of_the_motion_is_registered_as_without_it(scans, tmp_path):
    """The same 12 mm deformation of the CT, once as it is and once with the moving scan turned
    by 15 degrees and shifted by 20.8 mm: landmark errors within 10 % of each other, no fold."""
    errors = {}
    for name, degrees in (("still", 0.0), ("moved", 15.0)):
        shift = SHIFT if degrees else (0.0, 0.0, 0.0)
        paths = make_pair(scans["ct"], 12.0, seed=6, degrees=degrees, shift_mm=shift,
                          n_landmarks=150).save(tmp_path / name)
        result = nephi.register(paths["moving"], paths["fixed"], mask=paths["fixed_mask"],
                                landmarks=paths["fixed_points"],
                                moving_landmarks=paths["moving_points"], overrides=FAST)
        summary = result.summary
        errors[name] = summary["landmark_error_after_mm"]["mean_mm"]
        assert summary["folding_percent_in_mask"] == 0.0
        assert errors[name] < 0.6 * summary["landmark_error_before_mm"]["mean_mm"]
    assert abs(errors["moved"] - errors["still"]) <= 0.1 * errors["still"], errors


def test_mutual_information_registers_an_inverted_t1(scans, tmp_path):
    """--similarity mi on a T1 against an intensity-inverted, deformed copy of itself: landmark
    error within 20 % of NCC's on the same pair without the inversion."""
    import nibabel as nib

    paths = make_pair(scans["mri"], 12.0, seed=7, n_landmarks=150).save(tmp_path)
    img = nib.load(paths["moving"])
    data = img.get_fdata()
    inverted = str(tmp_path / "moving_inverted.nii.gz")
    nib.save(nib.Nifti1Image((data.max() - data).astype(np.float32), img.affine), inverted)
    errors = {}
    for name, moving, similarity in (("ncc", paths["moving"], "ncc"), ("mi", inverted, "mi")):
        result = nephi.register(moving, paths["fixed"], mask=paths["fixed_mask"],
                                landmarks=paths["fixed_points"],
                                moving_landmarks=paths["moving_points"], overrides=FAST,
                                similarity=similarity)
        errors[name] = result.summary["landmark_error_after_mm"]["mean_mm"]
        before = result.summary["landmark_error_before_mm"]["mean_mm"]
        assert result.summary["config"]["align"]["similarity"] == similarity
    assert errors["ncc"] < 0.6 * before
    assert errors["mi"] <= 1.2 * errors["ncc"], errors


def test_local_ncc_registration_aligns_globally_with_ncc(scans, tmp_path):
    """--similarity lncc is for the deformable stage; the global alignment keeps the global NCC
    (5^3-voxel windows inside a CT's brain mask, where tissue is nearly flat, led the affine fit
    away from the anatomy): the 15 degree, 20.8 mm motion of the CT is recovered as with ncc."""
    scan = scans["ct"]
    paths = make_pair(scan, 0.0, seed=5, degrees=15.0, shift_mm=SHIFT).save(tmp_path)
    result = nephi.register(paths["moving"], paths["fixed"], mask=paths["fixed_mask"],
                            moving_mask=paths["moving_mask"], similarity="lncc",
                            overrides={"align": {"only": True}, "device": "cpu"})
    assert result.summary["config"]["align"]["similarity"] == "ncc"
    assert result.summary["config"]["io"]["similarity"]["lncc"] == 1.0
    true = rigid_motion(scan.grid, 15.0, SHIFT)
    brain = scan.grid.index_to_ras_points(np.argwhere(scan.mask).astype(float))
    error = np.linalg.norm(result.affine(brain) - Affine(true)(brain), axis=1)
    assert error.max() < 0.5, error.max()
