"""HDF5 pair files written by ``nephi-prep``: resampling onto the network grid, masks, labels,
landmarks, splits, the COPDGene layout and the synthetic builders (moved from
tests/test_training.py)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import torch

from nephi.cli.prep import main as prep_main
from nephi.data.pairfile import PairDataset, PairFile
from nephi.data.preprocess import PrepConfig, network_grid, read_pairs_csv
from nephi.geometry.grid import Grid


# ----------------------------------------------------------------------------- HDF5 files
def _smooth(ras: np.ndarray) -> np.ndarray:
    """An analytic image (HU-like) of RAS mm points (..., 3)."""
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    return -800.0 + 300.0 * np.sin(x / 15.0) * np.cos(y / 20.0) + 2.0 * z


def _write(path, data, affine) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def _volume(grid: Grid) -> np.ndarray:
    idx = np.indices(grid.shape, dtype=np.float64).reshape(grid.ndim, -1).T
    return _smooth(grid.index_to_ras_points(idx)).reshape(grid.shape).astype(np.float32)


def test_pairs_hdf5_round_trip(tmp_path):
    """Images of different shape, spacing and orientation land on the fixed image's network
    grid through physical space; masks, labels, landmarks, geometry and the split survive."""
    fixed_aff = np.diag([3.0, 3.0, 4.0, 1.0])
    fixed_aff[:3, 3] = [-40.0, -30.0, -50.0]
    moving_aff = np.array([[-2.5, 0, 0, 45.0], [0, 0, 3.0, -35.0], [0, 3.5, 0, -45.0],
                           [0, 0, 0, 1]])  # flipped x, swapped y/z axes
    fixed_grid = Grid((28, 22, 26), fixed_aff)
    moving_grid = Grid((36, 26, 24), moving_aff)
    rows = ["name,moving,fixed,moving_mask,fixed_mask,moving_points,fixed_points,fixed_label,"
            "moving_label"]
    for k in range(3):
        f = _write(tmp_path / f"f{k}.nii.gz", _volume(fixed_grid), fixed_aff)
        m = _write(tmp_path / f"m{k}.nii.gz", _volume(moving_grid), moving_aff)
        _write(tmp_path / f"fm{k}.nii.gz", np.ones(fixed_grid.shape, np.uint8), fixed_aff)
        _write(tmp_path / f"mm{k}.nii.gz", np.ones(moving_grid.shape, np.uint8), moving_aff)
        lab = np.zeros(fixed_grid.shape, np.int16)
        lab[5:15, 4:12, 6:20] = 2
        _write(tmp_path / f"fl{k}.nii.gz", lab, fixed_aff)
        _write(tmp_path / f"ml{k}.nii.gz", np.zeros(moving_grid.shape, np.int16), moving_aff)
        np.savetxt(tmp_path / f"fp{k}.csv", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], delimiter=",",
                   header="x,y,z", comments="")
        np.savetxt(tmp_path / f"mp{k}.csv", [[2.0, 2.0, 3.0], [4.0, 7.0, 6.0]], delimiter=",",
                   header="x,y,z", comments="")
        rows.append(f"p{k},{os.path.basename(m)},{os.path.basename(f)},mm{k}.nii.gz,fm{k}.nii.gz,"
                    f"mp{k}.csv,fp{k}.csv,fl{k}.nii.gz,ml{k}.nii.gz")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "data.h5"
    assert prep_main(["pairs", "--csv", str(tmp_path / "pairs.csv"), "--out", str(out),
                      "--spacing", "4", "--shape", "20", "18", "16", "--intensity", "none",
                      "--val-fraction", "0.34", "--workers", "1"]) == 0

    data = PairFile(str(out))
    assert data.shape == (20, 18, 16) and np.allclose(data.spacing, 4.0)
    assert data.prep == PrepConfig(spacing=[4.0], shape=[20, 18, 16],
                                   intensity={"method": "none", "low": 1.0, "high": 99.0,
                                              "window": [-1000.0, 0.0]}, apply_mask=False)
    assert len(data.splits["train"]) == 2 and len(data.splits["val"]) == 1
    assert all(data.has.values())
    grid = data.grid("p0")
    assert grid.same_as(network_grid(fixed_grid, [4.0], [20, 18, 16]))
    centre = fixed_grid.index_to_ras_points((np.array(fixed_grid.shape) - 1) / 2)
    assert np.allclose(grid.index_to_ras_points((np.array(grid.shape) - 1) / 2), centre)
    arrays = data.read("p0")
    truth = _volume(grid)
    inside = arrays["moving_mask"] > 0
    assert 0.5 < inside.mean() < 1.0  # the moving field of view ends inside the network grid
    err = np.abs(arrays["moving"] - truth)[inside]
    assert np.percentile(err, 95) < 8.0  # HU; linear interpolation of a smooth image
    assert np.abs(arrays["fixed"] - truth)[arrays["fixed_mask"] > 0].mean() < 4.0
    assert set(np.unique(arrays["fixed_label"])) == {0, 2}
    assert np.allclose(arrays["fixed_points"], [[1, 2, 3], [4, 5, 6]])
    assert np.allclose(arrays["moving_points"], [[2, 2, 3], [4, 7, 6]])
    attrs = data.attrs("p0")
    assert attrs["moving_path"].endswith("m0.nii.gz") and attrs["split"] in ("train", "val")

    item = PairDataset(str(out), "train")[0]
    assert item["moving"].shape == (1, 20, 18, 16) and item["moving"].dtype == torch.float32
    assert item["fixed_mask"].dtype == torch.bool
    assert len(read_pairs_csv(str(tmp_path / "pairs.csv"))) == 3


def test_copdgene_layout(tmp_path):
    """The paper recipe on a tiny COPDGene-style folder: pairs found, masks applied, 2 mm,
    175^3, window [-1000, 0] -> [0, 1]; subjects with one phase are skipped."""
    aff = np.diag([5.0, 5.0, 6.0, 1.0])
    aff[:3, 3] = [-150.0, -150.0, -150.0]
    grid = Grid((60, 60, 50), aff)
    hu = np.clip(_volume(grid), -1200, 200)
    mask = np.zeros(grid.shape, np.uint8)
    mask[10:50, 10:50, 10:40] = 1
    for subject in ("10001A",):
        folder = tmp_path / "root" / subject / "Phase-1"
        folder.mkdir(parents=True)
        for phase in ("INSP", "EXP"):
            stem = f"{subject}_{phase}_STD_NJC_COPD"
            _write(folder / f"{stem}.nii.gz", hu, aff)
            _write(folder / f"{stem}_lung_mask.nii.gz", mask, aff)
    lonely = tmp_path / "root" / "10003C"
    lonely.mkdir()
    _write(lonely / "10003C_INSP_STD_NJC_COPD.nii.gz", hu, aff)
    out = tmp_path / "copd.h5"
    assert prep_main(["copdgene", str(tmp_path / "root"), "--out", str(out)]) == 0
    data = PairFile(str(out))
    assert data.shape == (175, 175, 175) and np.allclose(data.spacing, 2.0)
    assert data.prep.apply_mask and data.prep.intensity["method"] == "window"
    assert data.prep.intensity["window"] == [-1000.0, 0.0]
    assert data.splits["train"] + data.splits["val"] == ["10001A"]
    arrays = data.read("10001A")
    assert arrays["fixed"].min() >= 0.0 and arrays["fixed"].max() <= 1.0
    assert (arrays["fixed"][arrays["fixed_mask"] == 0] == 0).all()
    assert data.attrs("10001A")["moving_path"].endswith("10001A_EXP_STD_NJC_COPD.nii.gz")


def test_synthetic_and_tc_builders(tmp_path):
    out = tmp_path / "lung.h5"
    assert prep_main(["synthetic-lung", "--n", "2", "--shape", "20", "20", "20", "--spacing",
                      "12", "12", "12", "--n-landmarks", "10", "--out", str(out)]) == 0
    data = PairFile(str(out))
    assert data.shape == (20, 20, 20) and data.has["fixed_points"] and data.has["fixed_mask"]
    arrays = data.read(data.splits["train"][0])
    assert arrays["fixed_points"].shape == (10, 3) and 0 <= arrays["moving"].min()
    tc = tmp_path / "tc.h5"
    assert prep_main(["triangles-circles", "--n", "5", "--size", "32", "--mode", "hollow",
                      "--out", str(tc)]) == 0
    data = PairFile(str(tc))
    assert data.shape == (32, 32) and data.has["fixed_label"] and not data.has["fixed_mask"]



def test_pairs_aligned_before_resampling(tmp_path):
    """``nephi-prep pairs --align rigid``: a moving scan that is the fixed one turned by 10
    degrees and shifted by 6.2 mm (header only) is stored aligned: its image matches the fixed
    one and its landmarks land on the fixed landmarks; the pair file and so every checkpoint
    trained on it say so. Without --align the landmarks stay millimetres apart."""
    fixed_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    fixed_aff[:3, 3] = [-48.0, -45.0, -42.0]
    grid = Grid((32, 30, 28), fixed_aff)
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1).T
    ras = grid.index_to_ras_points(idx)
    blobs = [((-15, -10, 5), 12.0, 1.0), ((12, 8, -6), 9.0, 0.7), ((5, -18, 12), 7.0, 0.5),
             ((-8, 15, -12), 10.0, 0.8)]
    data = sum(w * np.exp(-np.sum((ras - c) ** 2, axis=1) / (2 * s * s)) for c, s, w in blobs)
    a = np.radians(10.0)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    motion[:3, 3] = [4.0, -3.0, 3.5]
    _write(tmp_path / "fixed.nii.gz", data.reshape(grid.shape).astype(np.float32), fixed_aff)
    _write(tmp_path / "moving.nii.gz", data.reshape(grid.shape).astype(np.float32),
           motion @ fixed_aff)
    points = np.array([c for c, _, _ in blobs], dtype=np.float64)
    np.savetxt(tmp_path / "fp.csv", points, delimiter=",", header="x,y,z", comments="")
    np.savetxt(tmp_path / "mp.csv", points @ motion[:3, :3].T + motion[:3, 3], delimiter=",",
               header="x,y,z", comments="")
    (tmp_path / "pairs.csv").write_text("name,moving,fixed,moving_points,fixed_points\n"
                                        "p0,moving.nii.gz,fixed.nii.gz,mp.csv,fp.csv\n")
    errors = {}
    for align in ("none", "rigid"):
        out = tmp_path / f"{align}.h5"
        assert prep_main(["pairs", "--csv", str(tmp_path / "pairs.csv"), "--out", str(out),
                          "--spacing", "3", "--shape", "32", "30", "28", "--val-fraction", "0",
                          "--align", align]) == 0
        pair_file = PairFile(str(out))
        assert pair_file.prep.align == align
        arrays = pair_file.read("p0")
        errors[align] = float(np.linalg.norm(arrays["moving_points"] - arrays["fixed_points"],
                                             axis=1).max())
        if align == "rigid":
            inside = arrays["fixed"] > 0.05
            assert np.corrcoef(arrays["moving"][inside], arrays["fixed"][inside])[0, 1] > 0.99
    assert errors["none"] > 5.0 and errors["rigid"] < 0.3, errors
