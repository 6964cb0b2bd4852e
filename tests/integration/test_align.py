"""Global alignment: a known rigid motion is recovered; the affine, deformable and composite files
are read by ITK and ANTs as nephi applies them; initial transforms from ANTs and displacement
fields; bad transform files."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import nephi
from nephi.cli.infer import main
from nephi.data.synthetic_lung import make_lung_pair
from nephi.geometry.grid import Grid, ras_to_lps
from nephi.io.fields import read_field, write_displacement_field
from nephi.io.images import load_image
from nephi.io.itk_affine import read_transform, write_affine
from nephi.results.warp import warp_image
from nephi.transforms.affine import Affine


pytestmark = pytest.mark.slow

FAST = ["--io-steps", "40", "--points", "1024", "--reg-points", "256", "--no-progress",
        "--set", "model.hidden=64", "--device", "cpu"]


def rigid(fixed_affine: np.ndarray, shape, degrees: float, shift_mm) -> np.ndarray:
    """A rotation of ``degrees`` about an oblique axis through the image centre, then a shift."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    centre = fixed_affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + fixed_affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + np.asarray(shift_mm)
    return out


@pytest.fixture(scope="module")
def lung(tmp_path_factory):
    """A lung pair with breathing motion whose moving scan also lies 15 degrees and ~20 mm away
    (same voxels, moved affine: fixed point x corresponds to moving point TRUE x exactly)."""
    root = tmp_path_factory.mktemp("align")
    pair = make_lung_pair(shape=(40, 40, 40), spacing=(6.0, 6.0, 6.0), motion_mm=8.0,
                          n_landmarks=80, seed=5)
    paths = pair.save(root)
    true = rigid(pair.exhale.affine, pair.exhale.shape, 15.0, [12.0, -10.0, 12.0])
    paths["moved"] = str(root / "exhale_moved.nii.gz")
    nib.save(nib.Nifti1Image(pair.exhale.get_fdata().astype(np.float32),
                             true @ pair.exhale.affine), paths["moved"])
    paths["moved_points"] = str(root / "exhale_moved_points.csv")
    moved = pair.exhale_points @ true[:3, :3].T + true[:3, 3]
    np.savetxt(paths["moved_points"], moved, fmt="%.5f", delimiter=",", header="x,y,z",
               comments="")
    paths["inhale_rotated"] = str(root / "inhale_rotated.nii.gz")
    nib.save(nib.Nifti1Image(pair.inhale.get_fdata().astype(np.float32),
                             true @ pair.inhale.affine), paths["inhale_rotated"])
    return root, paths, true, pair


def test_rigid_motion_alone_is_recovered(lung):
    root, paths, true, pair = lung
    result = nephi.register(paths["inhale_rotated"], paths["inhale"], align="rigid",
                            align_only=True)
    residual = Affine(np.linalg.inv(true) @ result.affine.matrix).parts()
    assert residual["rotation_deg"] < 0.5, residual
    points = pair.inhale_points
    assert np.linalg.norm(result.affine(points) - Affine(true)(points), axis=1).max() < 0.5
    parts = result.summary["align"]
    assert abs(parts["rotation_deg"] - 15.0) < 0.5 and parts["stages"][0]["stage"] == "rigid"
    assert parts["stages"][0]["steps"][-1] > 0  # alone, the rigid stage runs its finest level
    assert result.summary["io_steps"] == 0


def run(root, paths, name, *extra, moving: str = "moved") -> dict:
    """nephi-infer (test settings) on the pair whose moving scan is ``moving``: "moved" (with the
    rigid motion) or "exhale" (breathing motion only) -> summary.json."""
    out = root / name
    assert main(["--pair", paths[moving], paths["inhale"], "--mask", paths["inhale_mask"],
                 "--landmarks", paths["inhale_points"], "--moving-landmarks",
                 paths[f"{moving}_points"], "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_alignment_then_deformable_reaches_the_unmoved_error(lung, capsys):
    root, paths, true, pair = lung
    moved = run(root, paths, "aligned")
    unmoved = run(root, paths, "plain", "--align", "none", moving="exhale")
    none = run(root, paths, "unaligned", "--align", "none")
    after = moved["landmark_error_after_mm"]["mean_mm"]
    assert moved["landmark_error_before_mm"]["mean_mm"] > 15.0
    assert after < 1.25 * unmoved["landmark_error_after_mm"]["mean_mm"] + 0.2, (after, unmoved)
    assert none["landmark_error_after_mm"]["mean_mm"] > 3 * after  # the stage is what helps
    assert moved["folding_percent_in_mask"] == 0.0
    rigid, affine = moved["align"]["stages"]  # the affine stage alone refines the finest level
    assert rigid["steps"][-1] == 0 and affine["steps"][-1] > 0, moved["align"]["stages"]
    capsys.readouterr()


def sitk_warp(transform_path: str, moving: str, fixed: str) -> np.ndarray:
    transform = sitk.ReadTransform(transform_path)
    out = sitk.Resample(sitk.ReadImage(moving, sitk.sitkFloat32), sitk.ReadImage(fixed),
                        transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out)


def ncc(a, b) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_itk_and_ants_apply_the_composite_as_nephi(lung, capsys):
    root, paths, true, pair = lung
    out = root / "aligned"
    if not out.exists():
        run(root, paths, "aligned")
    # whole images, the edge of the rotated moving field of view included: nephi samples the
    # moving image by ITK's rule (edge values up to half a voxel out, 0 further)
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    by_composite = sitk_warp(str(out / "composite.h5"), paths["moved"], paths["inhale"])
    by_field = sitk_warp(str(out / "transform.h5"), paths["moved"], paths["inhale"])
    assert ncc(by_composite, by_field) >= 0.9999  # the parts make the whole transform
    assert np.abs(by_composite - by_field).max() < 0.5  # HU
    assert ncc(by_composite, warped) >= 0.999
    ants = pytest.importorskip("ants")
    import pandas as pd

    fixed, moving = ants.image_read(paths["inhale"]), ants.image_read(paths["moved"])
    by_ants = ants.apply_transforms(fixed, moving, [str(out / "composite.h5")]).numpy()
    nephi_warped = np.asarray(nib.load(str(out / "warped.nii.gz")).dataobj)
    assert ncc(by_ants, nephi_warped) >= 0.999
    # the parts as ANTs lists its own (*Warp.nii.gz, *GenericAffine.mat): a fixed point p goes
    # to affine(p + f(p)), the first listed acting first on points
    parts = [str(out / "deformable_warp.nii.gz"), str(out / "affine.mat")]
    by_parts = ants.apply_transforms(fixed, moving, parts).numpy()
    assert ncc(by_parts, nephi_warped) >= 0.999
    inverse_parts = [str(out / "inverse_deformable_warp.nii.gz"), str(out / "inverse_affine.mat")]
    q = pair.exhale_points[::8] @ true[:3, :3].T + true[:3, 3]  # moving points
    lps = pd.DataFrame(ras_to_lps(q), columns=["x", "y", "z"])
    by_ants_points = ras_to_lps(ants.apply_transforms_to_points(3, lps, inverse_parts).to_numpy())
    np.testing.assert_allclose(by_ants_points, nephi.Result.load(str(out)).field(inverse=True)(q),
                               atol=1e-3)
    # both composites map points as the whole fields do (fixed -> moving, moving -> fixed)
    result = nephi.Result.load(str(out))
    for name, field in (("composite.h5", result.field()),
                        ("inverse_composite.h5", result.field(inverse=True))):
        composite = sitk.ReadTransform(str(out / name))
        p = field.grid.index_to_ras_points(np.argwhere(np.ones(field.grid.shape))[::41])
        q = np.array([composite.TransformPoint(tuple(v)) for v in ras_to_lps(p)])
        np.testing.assert_allclose(ras_to_lps(q), field(p), atol=1e-4)
    # the affine alone maps fixed points as the summary's affine does
    affine = sitk.ReadTransform(str(out / "affine.mat"))
    p = pair.inhale_points[:5]
    mapped = np.array([affine.TransformPoint(tuple(q)) for q in ras_to_lps(p)])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    expected = np.asarray(summary["align"]["matrix"])
    np.testing.assert_allclose(ras_to_lps(mapped), p @ expected[:3, :3].T + expected[:3, 3],
                               atol=1e-6)
    capsys.readouterr()


def test_initial_transform_from_ants(lung, capsys):
    root, paths, true, pair = lung
    ants = pytest.importorskip("ants")
    import pandas as pd

    # ANTs jitters its metric samples at random, and ITK's threads sum them in an order that
    # varies: seeded and on one thread (a process of its own, as ITK reads its thread count once
    # per process) its affine is the same on every run
    ants_affine = str(root / "ants_affine.mat")
    script = ("import shutil, sys, ants\n"
              "reg = ants.registration(ants.image_read(sys.argv[1]), ants.image_read(sys.argv[2]),"
              " type_of_transform='Affine')\n"
              "shutil.copy(reg['fwdtransforms'][0], sys.argv[3])\n")
    env = dict(os.environ, ANTS_RANDOM_SEED="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    subprocess.run([sys.executable, "-c", script, paths["inhale"], paths["moved"], ants_affine],
                   check=True, env=env, timeout=300)
    # nephi applies the ANTs file exactly as ANTs does (points: fixed -> moving, LPS in ANTs)
    run(root, paths, "ants_only", "--align", "none", "--align-only", "--initial-transform",
        ants_affine)
    mapped = np.loadtxt(root / "ants_only" / "landmarks_moving.csv", delimiter=",", skiprows=1)
    lps = pd.DataFrame(ras_to_lps(pair.inhale_points), columns=["x", "y", "z"])
    by_ants = ants.apply_transforms_to_points(3, lps, [ants_affine]).to_numpy()
    assert np.abs(ras_to_lps(by_ants) - mapped).max() < 1e-3
    # from the ANTs start, refined by the alignment stage and then IO with the same steps:
    # within 5 % of nephi's own alignment (ANTs' affine alone is worse: see the README)
    from_ants = run(root, paths, "from_ants", "--initial-transform", ants_affine)
    assert from_ants["align"]["init"] == "given transform"
    assert from_ants["initial_transform"]["type"] == "affine"
    own = json.loads((root / "aligned" / "summary.json").read_text(encoding="utf-8")) if (
        root / "aligned").exists() else run(root, paths, "aligned")
    assert from_ants["io_steps"] == own["io_steps"]
    mine, theirs = (own["landmark_error_after_mm"]["mean_mm"],
                    from_ants["landmark_error_after_mm"]["mean_mm"])
    assert abs(theirs - mine) <= 0.05 * mine, (theirs, mine)
    # the true transform as a file: the alignment-only landmark error is that of the motion alone
    write_affine(str(root / "true.txt"), Affine(true))
    exact = run(root, paths, "exact", "--align", "none", "--align-only", "--initial-transform",
                str(root / "true.txt"))
    unmoved = np.linalg.norm(pair.inhale_points - pair.exhale_points, axis=1).mean()
    assert abs(exact["landmark_error_after_mm"]["mean_mm"] - unmoved) < 0.05
    capsys.readouterr()


def test_initial_displacement_field(lung, capsys):
    """A displacement field as the start (nephi's own warp.nii.gz after a short run): no
    alignment on top, IO refines it, warp.nii.gz stays the whole map and the moving image is
    sampled once, through it. The .h5 forms and ANTs' *Warp.nii.gz read as the same map."""
    root, paths, true, pair = lung
    short = run(root, paths, "short", "--align", "none", "--io-steps", "8", moving="exhale")
    start = root / "short" / "warp.nii.gz"
    refined = run(root, paths, "from_field", "--initial-transform", str(start), moving="exhale")
    out = root / "from_field"
    assert refined["initial_transform"]["type"] == "displacement field" and "align" not in refined
    before = short["landmark_error_after_mm"]["mean_mm"]
    assert refined["landmark_error_after_mm"]["mean_mm"] < 0.8 * before, (refined, before)
    assert refined["folding_percent_in_mask"] == 0.0
    assert refined["inverse_consistency_mm_mean"] < 0.5  # inverse_warp includes F^-1
    assert not (out / "affine.mat").exists()
    # the start alone (--align-only) is the short run's map
    alone = run(root, paths, "field_only", "--align-only", "--initial-transform", str(start),
                moving="exhale")
    assert abs(alone["landmark_error_after_mm"]["mean_mm"] - before) < 0.01
    # warp.nii.gz applied by ITK reproduces warped.nii.gz (inside the body, see above) ...
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "warp.nii.gz"),
                                                           sitk.sitkVectorFloat64))
    by_itk = sitk.GetArrayFromImage(sitk.Resample(
        sitk.ReadImage(paths["exhale"], sitk.sitkFloat32), sitk.ReadImage(paths["inhale"]),
        field, sitk.sitkLinear, 0.0))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(paths["inhale_mask"])) > 0
    assert ncc(by_itk[mask], warped[mask]) >= 0.999
    # ... and is the one sampling of the moving image: warping through it gives warped.nii.gz
    again = warp_image(load_image(paths["exhale"]), read_field(str(out / "warp.nii.gz")))
    assert np.abs(again - np.asarray(nib.load(str(out / "warped.nii.gz")).dataobj)).max() < 0.1
    # the same start as ITK .h5 files: the field itself, and nephi's composite (affine + field)
    np.testing.assert_allclose(read_transform(str(root / "short" / "transform.h5"), 3).disp,
                               read_field(str(start)).disp, atol=1e-4)
    aligned = root / "aligned"
    if not aligned.exists():
        run(root, paths, "aligned")
    np.testing.assert_allclose(read_transform(str(aligned / "composite.h5"), 3).disp,
                               read_field(str(aligned / "warp.nii.gz")).disp, atol=1e-3)
    # ANTs' own displacement field maps points as ANTs maps them
    ants = pytest.importorskip("ants")
    import pandas as pd

    reg = ants.registration(ants.image_read(paths["inhale"]), ants.image_read(paths["exhale"]),
                            type_of_transform="SyNOnly", reg_iterations=(10, 5, 0),
                            initial_transform="identity")
    ants_warp = next(f for f in reg["fwdtransforms"] if f.endswith("Warp.nii.gz"))
    p = pair.inhale_points
    lps = pd.DataFrame(ras_to_lps(p), columns=["x", "y", "z"])
    by_ants = ras_to_lps(ants.apply_transforms_to_points(3, lps, [ants_warp]).to_numpy())
    np.testing.assert_allclose(read_transform(ants_warp, 3)(p), by_ants, atol=1e-3)
    capsys.readouterr()


def test_bad_transform_files_are_one_line_errors(lung, capsys, tmp_path):
    root, paths, true, pair = lung
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a transform")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    two_d = tmp_path / "two_d.txt"
    sitk.WriteTransform(sitk.AffineTransform(2), str(two_d))
    bspline = tmp_path / "bspline.h5"
    sitk.WriteTransform(sitk.BSplineTransform(3), str(bspline))
    field_2d = tmp_path / "field_2d.nii.gz"
    grid_2d = Grid((6, 5), np.eye(3))
    write_displacement_field(str(field_2d), np.zeros((6, 5, 2)), grid_2d)
    field = str(tmp_path / "field.nii.gz")
    write_displacement_field(field, np.zeros((4, 4, 4, 3)), Grid(
        (4, 4, 4), np.eye(4)))
    for path, words, extra in (
            (str(tmp_path / "missing.mat"), "not found", ()),
            (str(garbage), "not a readable ITK transform", ()),
            (str(two_d), "2-D transform", ()),
            (str(bspline), "BSplineTransform is neither affine nor a displacement field", ()),
            (str(broken), "not a readable NIfTI", ()),
            (paths["inhale"], "is not an ITK displacement field", ()),  # a scalar image
            (str(field_2d), "2-D displacement field for 3-D images", ()),
            (field, "no alignment runs on top", ("--align", "affine"))):
        out = tmp_path / "o"
        rc = main(["--pair", paths["moved"], paths["inhale"], "--out", str(out), *FAST,
                   "--initial-transform", path, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0] and path in err[0], err
        assert not out.exists()


def test_an_alignment_that_loses_the_anatomy_is_not_kept():
    """Two hollow Triangles & Circles shapes that barely overlap (benchmark pair seed 9103): the
    optimized 1 - NCC^2 over the points left inside the moving image drifts to an
    anti-correlated, shrunken pose that made every later stage fail (Dice 0). The check over the
    whole fixed image keeps the best of identity, start and result, so the alignment never ends
    below where it started."""
    from nephi.config.loader import load_defaults
    from nephi.data.triangles_circles import make_tc_pair
    from nephi.optim.align import align

    tc = make_tc_pair(128, "hollow", rng=9103)
    grid = Grid((128, 128), np.eye(3))
    cfg = load_defaults("pairwise")["align"]
    fixed, moving = (np.asarray(tc[k], dtype=np.float32) for k in ("fixed", "moving"))
    affine, info = align(fixed, grid, moving, grid, cfg, progress=False)
    scores = info["check_ncc"]
    assert scores["identity"] > scores["aligned"]  # the drift this test is about happens
    assert "kept" in info and np.allclose(affine.matrix, np.eye(3))
