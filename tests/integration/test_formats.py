"""Scans as they come: NRRD, MetaImage and DICOM series read through SimpleITK register exactly
as their NIfTI originals; batch pairwise runs; quiet logs; a full disk ends like bad input."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nephi.cli.infer import main
from nephi.io.fields import read_field
from nephi.io.images import load_image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 14, 12)
FAST = ["--io-steps", "3", "--points", "64", "--reg-points", "16", "--no-progress", "--seed", "0",
        "--device", "cpu", "--set", "model.hidden=16", "--set", "model.fourier_features=8",
        "--set", "model.latent_grid=4", "--set", "model.latent_channels=4"]


def blob(shift) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r2 = sum((g - s) ** 2 for g, s in zip(grids, shift))
    return np.rint(1000.0 * np.exp(-3.0 * r2) - 500.0).astype(np.int16)  # CT-like integers


def oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 1.5, 3.0])
    affine[:3, 3] = [-12.0, 7.0, 20.0]
    return affine


def to_sitk(path: str) -> sitk.Image:
    """The NIfTI file as SimpleITK reads it (its own NIfTI reader: an independent conversion)."""
    return sitk.ReadImage(path)


def write_dicom_series(image: sitk.Image, folder: Path) -> str:
    """A DICOM series (one file per slice) with the image's geometry, int16 voxels."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash(str(folder))) % 10 ** 12)
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT", "0020|000e": series_uid, "0020|000d": series_uid + ".1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(piece)
    return str(folder)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    paths = {}
    for name, shift, affine in (("moving", (0.15, -0.1, 0.05), oblique_affine()),
                                ("fixed", (0.0, 0.0, 0.0), oblique_affine())):
        nifti = str(root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(blob(shift), affine), nifti)
        paths[f"{name}.nii.gz"] = nifti
        image = to_sitk(nifti)
        for suffix in ("nrrd", "mha"):
            paths[f"{name}.{suffix}"] = str(root / f"{name}.{suffix}")
            sitk.WriteImage(image, paths[f"{name}.{suffix}"])
    # DICOM slices need an axial orientation here (the series reader sorts by position)
    axial = np.diag([2.0, 1.5, 3.0, 1.0])
    axial[:3, 3] = [-12.0, 7.0, 20.0]
    for name, shift in (("moving", (0.15, -0.1, 0.05)), ("fixed", (0.0, 0.0, 0.0))):
        nifti = str(root / f"{name}_axial.nii.gz")
        nib.save(nib.Nifti1Image(blob(shift), axial), nifti)
        paths[f"{name}_axial.nii.gz"] = nifti
        paths[f"{name}.dcm"] = write_dicom_series(to_sitk(nifti), root / f"{name}_dicom")
    return root, paths


def register(root, moving, fixed, name, extra=()) -> np.ndarray:
    out = str(root / name)
    assert main(["--pair", moving, fixed, "--out", out, *FAST, *extra]) == 0
    return read_field(os.path.join(out, "warp.nii.gz")).disp


def test_itk_formats_read_as_the_nifti(pair):
    root, paths = pair
    reference = load_image(paths["fixed.nii.gz"])
    for key in ("fixed.nrrd", "fixed.mha"):
        img = load_image(paths[key])
        np.testing.assert_allclose(img.grid.affine, reference.grid.affine, atol=1e-5)
        np.testing.assert_array_equal(img.data, reference.data)
        assert img.dtype == np.int16
    dicom = load_image(paths["fixed.dcm"])
    axial = load_image(paths["fixed_axial.nii.gz"])
    np.testing.assert_allclose(dicom.grid.affine, axial.grid.affine, atol=1e-5)
    np.testing.assert_array_equal(dicom.data, axial.data)
    one_file = sorted(os.listdir(paths["fixed.dcm"]))[3]
    np.testing.assert_array_equal(load_image(os.path.join(paths["fixed.dcm"], one_file)).data,
                                  axial.data)


def test_registration_is_the_same_from_every_format(pair, capsys):
    root, paths = pair
    nifti = register(root, paths["moving.nii.gz"], paths["fixed.nii.gz"], "nifti")
    for suffix in ("nrrd", "mha"):
        disp = register(root, paths[f"moving.{suffix}"], paths[f"fixed.{suffix}"], suffix)
        assert np.abs(disp - nifti).max() < 1e-4, suffix
        assert os.path.isfile(root / suffix / f"warped.{suffix}")  # the fixed input's format
    mixed = register(root, paths["moving.nrrd"], paths["fixed.mha"], "mixed")
    assert np.abs(mixed - nifti).max() < 1e-4
    axial = register(root, paths["moving_axial.nii.gz"], paths["fixed_axial.nii.gz"], "axial")
    dicom = register(root, paths["moving.dcm"], paths["fixed.dcm"], "dicom",
                     extra=["--output-format", "nrrd"])
    assert np.abs(dicom - axial).max() < 1e-4
    assert os.path.isfile(root / "dicom" / "warped.nrrd")
    assert np.abs(nifti).max() > 100 * 1e-4  # the runs moved far more than the tolerance


def test_dicom_folder_with_two_series_names_them(pair, capsys, tmp_path):
    root, paths = pair
    both = tmp_path / "both"
    both.mkdir()
    for key in ("moving.dcm", "fixed.dcm"):
        for name in os.listdir(paths[key]):
            os.link(os.path.join(paths[key], name), both / f"{key}_{name}")
    rc = main(["--pair", str(both), paths["fixed.nii.gz"], "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "2 DICOM series" in err[0] and str(both) in err[0]
    assert not (tmp_path / "o").exists()


def write_pairs_csv(root: Path, n: int) -> str:
    rows = ["name,moving,fixed"]
    for k in range(n):
        rows.append(f"p{k},moving.nii.gz,fixed.nii.gz")
    path = root / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_pairs_without_checkpoint_are_resumable(pair, capsys, tmp_path, monkeypatch):
    import nephi.pipeline.pairwise as pairwise

    root, paths = pair
    csv_path = write_pairs_csv(root, 3)
    out = tmp_path / "batch"
    calls = []
    real = pairwise.register

    def killed_after_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while the second pair runs
        return real(*args, **kwargs)

    monkeypatch.setattr(pairwise, "register", killed_after_first)
    assert main(["--pairs", csv_path, "--out", str(out), *FAST]) == 130
    assert sorted(os.listdir(out)) == ["p0"]  # no half-written folder of p1
    calls.clear()
    monkeypatch.setattr(pairwise, "register", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    assert main(["--pairs", csv_path, "--out", str(out), *FAST]) == 0
    assert [os.path.basename(c) for c in calls] == ["p1", "p2"]
    table = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert len(table) == 4 and table[0].startswith("name,status,ncc_before")
    assert "skipped" in table[1] and table[2].split(",")[1] == "done"
    capsys.readouterr()


def test_log_of_a_run_is_short(pair, tmp_path):
    root, paths = pair
    log = tmp_path / "log.txt"
    argv = ["--pair", paths["moving.nii.gz"], paths["fixed.nii.gz"], "--out",
            str(tmp_path / "r"), *[a for a in FAST if a != "--no-progress"]]
    argv[argv.index("--io-steps") + 1] = "40"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "-m", "nephi.cli.infer", *argv], cwd=REPO,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert proc.returncode == 0, lines[-5:]
    assert 2 <= len(lines) <= 12, lines
    assert "\r" not in log.read_text(encoding="utf-8")
    assert any("IO nephi: 40/40 steps" in line for line in lines)


def test_full_disk_ends_like_bad_input(pair, capsys, tmp_path, monkeypatch):
    import nephi.results.result as result_module

    root, paths = pair
    real = result_module.save_scalar

    def full(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(result_module, "save_scalar", full)
    out = tmp_path / "full"
    rc = main(["--pair", paths["moving.nii.gz"], paths["fixed.nii.gz"], "--out", str(out), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and str(out) in err[0]
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".partial" in n]
