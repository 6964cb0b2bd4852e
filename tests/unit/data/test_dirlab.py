"""Tests of the DIR-LAB converter on tiny synthetic cases (no real data needed)."""

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nephi.cli.prep import add_command
from nephi.data import dirlab


REPO = Path(__file__).resolve().parents[3]

COPD_SHAPE = (16, 12, 10)
COPD_SPACING = (0.6, 0.6, 2.5)
CASE_SHAPE = (14, 10, 8)
CASE_SPACING = (1.1, 1.1, 2.5)


def write_raw(path: Path, volume_xyz: np.ndarray) -> None:
    """Write an (X, Y, Z) int16 volume the way DIR-LAB stores it: x fastest, little-endian."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(volume_xyz.transpose(2, 1, 0)).astype("<i2").tofile(path)


def write_points(path: Path, points, sep="\t") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sep.join(str(v) for v in p) + "\n" for p in points))


def write_table(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "nx", "ny", "nz", "sx", "sy", "sz"])
        for case, shape, spacing in rows:
            writer.writerow([case, *shape, *spacing])
    return path


def random_volume(rng, shape):
    return rng.integers(0, 2000, size=shape).astype(np.int16)


def random_points(rng, shape, n):
    return np.stack([rng.integers(1, s + 1, size=n) for s in shape], axis=1)


@pytest.fixture
def fake_root(tmp_path):
    """A COPD case and a 4DCT case in their distributed layouts, plus a geometry table."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    data = {}

    inhale = random_volume(rng, COPD_SHAPE)
    exhale = random_volume(rng, COPD_SHAPE)
    copd_in = random_points(rng, (COPD_SHAPE[0] - 3, COPD_SHAPE[1] - 2, COPD_SHAPE[2] - 1), 20)
    offsets = rng.integers(-2, 4, size=copd_in.shape)
    offsets = np.clip(offsets, 1 - copd_in, np.array(COPD_SHAPE) - copd_in)
    copd_ex = copd_in + offsets
    case_dir = root / "COPD" / "copd1" / "copd1"
    write_raw(case_dir / "copd1_iBHCT.img", inhale)
    write_raw(case_dir / "copd1_eBHCT.img", exhale)
    write_points(case_dir / "copd1_300_iBH_xyz_r1.txt", copd_in)
    write_points(case_dir / "copd1_300_eBH_xyz_r1.txt", copd_ex, sep=" ")
    data["copd1"] = dict(inhale=inhale, exhale=exhale, pin=copd_in, pex=copd_ex,
                         spacing=COPD_SPACING, shape=COPD_SHAPE)

    t00 = random_volume(rng, CASE_SHAPE)
    t50 = random_volume(rng, CASE_SHAPE)
    c_in = random_points(rng, CASE_SHAPE, 15)
    c_ex = c_in.copy()
    c_ex[:, 2] = np.clip(c_ex[:, 2] + 1, 1, CASE_SHAPE[2])
    pack = root / "4DCT" / "Case3Pack"
    write_raw(pack / "Images" / "case3_T00_s.img", t00)
    write_raw(pack / "Images" / "case3_T50_s.img", t50)
    write_points(pack / "extremePhases" / "Case3_300_T00_xyz.txt", c_in)
    write_points(pack / "extremePhases" / "Case3_300_T50_xyz.txt", c_ex)
    data["case3"] = dict(inhale=t00, exhale=t50, pin=c_in, pex=c_ex,
                         spacing=CASE_SPACING, shape=CASE_SHAPE)

    table = write_table(tmp_path / "table.csv", [("copd1", COPD_SHAPE, COPD_SPACING),
                                                 ("case3", CASE_SHAPE, CASE_SPACING)])
    return root, table, data


def read_csv_points(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["x", "y", "z"]
    return np.array([[float(v) for v in r] for r in rows[1:]])


def test_read_dirlab_img_axis_order(tmp_path):
    volume = np.arange(np.prod(COPD_SHAPE), dtype=np.int16).reshape(COPD_SHAPE)
    path = tmp_path / "v.img"
    write_raw(path, volume)
    out = dirlab.read_dirlab_img(path, COPD_SHAPE)
    assert out.shape == COPD_SHAPE
    np.testing.assert_array_equal(out, volume)
    flat = np.fromfile(path, "<i2")
    x, y, z = 5, 7, 3
    assert out[x, y, z] == flat[x + COPD_SHAPE[0] * (y + COPD_SHAPE[1] * z)]


def test_read_dirlab_img_size_mismatch_names_file(tmp_path):
    path = tmp_path / "short.img"
    write_raw(path, np.zeros((16, 12, 9), np.int16))
    with pytest.raises(ValueError, match=r"short\.img.*does not match.*16x12x10.*9 slices"):
        dirlab.read_dirlab_img(path, COPD_SHAPE)


def test_read_dirlab_points_formats(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("1\t2\t3\n  4 5   6.5 \n\n7\t 8\t9\t\n")
    pts = dirlab.read_dirlab_points(path)
    np.testing.assert_array_equal(pts, [[1, 2, 3], [4, 5, 6.5], [7, 8, 9]])
    assert pts.dtype == np.float64


@pytest.mark.parametrize("bad, line", [("1 2 3\n4 5\n", 2), ("1 2 3\n\n4 x 6\n", 3),
                                       ("1 2 3 4\n", 1), ("1 nan 2\n", 1)])
def test_read_dirlab_points_malformed(tmp_path, bad, line):
    path = tmp_path / "bad_points.txt"
    path.write_text(bad)
    with pytest.raises(ValueError, match=rf"bad_points\.txt, line {line}:"):
        dirlab.read_dirlab_points(path)


def test_read_dirlab_points_empty(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: no landmarks"):
        dirlab.read_dirlab_points(path)


def test_convert_round_trip_and_geometry(fake_root, tmp_path):
    root, table, data = fake_root
    out = tmp_path / "out"
    results = dirlab.convert_dirlab(root, out, table=table, hu_offset=0)
    assert [r["case"] for r in results] == ["case3", "copd1"]
    for r in results:
        d = data[r["case"]]
        for phase in ("inhale", "exhale"):
            image = nib.load(out / r["case"] / f"{r['case']}_{phase}.nii.gz")
            assert image.shape == d["shape"]
            np.testing.assert_array_equal(np.asarray(image.dataobj), d[phase])
            affine = image.affine
            np.testing.assert_allclose(affine, np.diag([-s for s in d["spacing"]] + [1.0]))
            np.testing.assert_allclose(image.header.get_zooms(), d["spacing"], rtol=1e-6)
            assert nib.aff2axcodes(affine) == ("L", "P", "I")
            pts = read_csv_points(out / r["case"] / f"{r['case']}_{phase}_points.csv")
            raw_pts = d["pin"] if phase == "inhale" else d["pex"]
            expected = (affine[:3, :3] @ (raw_pts - 1.0).T).T + affine[:3, 3]
            np.testing.assert_allclose(pts, expected, atol=5e-5)
            index = np.round(np.linalg.inv(affine) @ np.c_[pts, np.ones(len(pts))].T)[:3].T
            np.testing.assert_array_equal(index.astype(int), raw_pts - 1)


def test_hu_offset_default_and_explicit(fake_root, tmp_path):
    root, table, data = fake_root
    res = dirlab.convert_dirlab(root, tmp_path / "a", cases=["copd1"], table=table)
    assert res[0]["hu_offset"] == -1024
    image = nib.load(tmp_path / "a" / "copd1" / "copd1_inhale.nii.gz")
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj),
                                  data["copd1"]["inhale"].astype(np.int32) - 1024)
    dirlab.convert_dirlab(root, tmp_path / "b", cases=["case3"], table=table, hu_offset=-1000)
    image = nib.load(tmp_path / "b" / "case3" / "case3_exhale.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj),
                                  data["case3"]["exhale"].astype(np.int32) - 1000)


def test_identity_error_matches_analytic(fake_root, tmp_path):
    root, table, data = fake_root
    results = {r["case"]: r for r in dirlab.convert_dirlab(root, tmp_path / "o", table=table)}
    for case, d in data.items():
        expected = np.linalg.norm((d["pex"] - d["pin"]) * np.array(d["spacing"]), axis=1)
        assert results[case]["n_points"] == len(expected)
        assert results[case]["mean_error_mm"] == pytest.approx(expected.mean(), abs=1e-6)
        assert results[case]["std_error_mm"] == pytest.approx(expected.std(), abs=1e-6)
        fixed = read_csv_points(results[case]["inhale_points"])
        moving = read_csv_points(results[case]["exhale_points"])
        np.testing.assert_allclose(dirlab.initial_error_mm(fixed, moving), expected, atol=2e-4)
    case3 = np.full(len(data["case3"]["pin"]), 2.5) * (data["case3"]["pex"][:, 2]
                                                       - data["case3"]["pin"][:, 2])
    assert results["case3"]["mean_error_mm"] == pytest.approx(np.abs(case3).mean(), abs=1e-9)


def test_initial_error_helper():
    a = np.zeros((2, 3))
    b = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(dirlab.initial_error_mm(a, b), [5.0, 2.0])
    with pytest.raises(ValueError):
        dirlab.initial_error_mm(a, b[:1])


def test_pairs_and_initial_errors_csv(fake_root, tmp_path):
    root, table, _ = fake_root
    out = tmp_path / "out"
    results = dirlab.convert_dirlab(root, out, table=table)
    with open(out / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == ["moving", "fixed", "moving_points", "fixed_points"]
    assert rows[1] == {"moving": "copd1/copd1_exhale.nii.gz", "fixed": "copd1/copd1_inhale.nii.gz",
                       "moving_points": "copd1/copd1_exhale_points.csv",
                       "fixed_points": "copd1/copd1_inhale_points.csv"}
    for row in rows:
        for value in row.values():
            assert not Path(value).is_absolute() and (out / value).is_file()
    with open(out / "initial_errors.csv", newline="", encoding="utf-8") as handle:
        errors = list(csv.DictReader(handle))
    assert [e["case"] for e in errors] == ["case3", "copd1"]
    assert float(errors[1]["published_mean_mm"]) == 26.34
    assert float(errors[1]["mean_mm"]) == pytest.approx(results[1]["mean_error_mm"], abs=1e-4)


def test_case_selection_and_missing_files(fake_root, tmp_path):
    root, table, _ = fake_root
    res = dirlab.convert_dirlab(root, tmp_path / "o", cases=["COPD1"], table=table)
    assert [r["case"] for r in res] == ["copd1"]
    with pytest.raises(FileNotFoundError, match="copd2"):
        dirlab.convert_dirlab(root, tmp_path / "o", cases=["copd2"], table=table)
    (root / "4DCT" / "Case3Pack" / "extremePhases" / "Case3_300_T50_xyz.txt").unlink()
    with pytest.warns(UserWarning, match="skipping case3"):
        res = dirlab.convert_dirlab(root, tmp_path / "p", table=table)
    assert [r["case"] for r in res] == ["copd1"]


def test_builtin_table_size_mismatch_is_clear(fake_root, tmp_path):
    root, _, _ = fake_root
    with pytest.raises(ValueError, match=r"copd1_iBHCT\.img.*512x512x121"):
        dirlab.convert_dirlab(root, tmp_path / "o", cases=["copd1"])


def test_alternative_names_are_found(tmp_path):
    rng = np.random.default_rng(1)
    pack = tmp_path / "Case8Deploy"
    write_raw(pack / "images" / "CASE8_T00.img", random_volume(rng, CASE_SHAPE))
    write_raw(pack / "images" / "case8_T50-ssm.img", random_volume(rng, CASE_SHAPE))
    pts = random_points(rng, CASE_SHAPE, 4)
    write_points(pack / "extremePhases" / "case8_dirLab300_T00_xyz.txt", pts)
    write_points(pack / "extremePhases" / "case8_dirLab300_T50_xyz.txt", pts)
    found = dirlab.find_case_files(tmp_path)
    assert set(found["case8"]) == {("img", "inhale"), ("img", "exhale"),
                                   ("pts", "inhale"), ("pts", "exhale")}
    res = dirlab.convert_dirlab(tmp_path, tmp_path / "out",
                                table={"case8": dirlab.CaseGeometry(CASE_SHAPE, CASE_SPACING)})
    assert res[0]["mean_error_mm"] == 0.0


def test_load_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case,nx,ny,nz,sx,sy\ncopd1,1,2,3,1,1\n")
    with pytest.raises(ValueError, match="sz"):
        dirlab.load_table(bad)
    bad.write_text("case,nx,ny,nz,sx,sy,sz\ncopd1,1,2,3,1,1,1\ncopd2,1,two,3,1,1,1\n")
    with pytest.raises(ValueError, match="bad.csv, line 3"):
        dirlab.load_table(bad)
    good = write_table(tmp_path / "good.csv", [("Case01", (2, 3, 4), (0.5, 0.5, 2.0))])
    assert dirlab.load_table(good) == {"case1": dirlab.CaseGeometry((2, 3, 4), (0.5, 0.5, 2.0))}


def test_builtin_tables_plausible():
    assert sorted(dirlab.FOURDCT_TABLE) == sorted(f"case{i}" for i in range(1, 11))
    assert sorted(dirlab.COPD_TABLE) == sorted(f"copd{i}" for i in range(1, 11))
    for case, geometry in dirlab.DIRLAB_TABLE.items():
        nx, ny, nz = geometry.shape_xyz
        sx, sy, sz = geometry.spacing_xyz
        assert nx == ny and nx in (256, 512) and 90 <= nz <= 140
        assert sx == sy and 0.5 < sx < 1.2 and sz == 2.5
        assert 2.0 < dirlab.PUBLISHED_INITIAL_ERROR_MM[case] < 35.0
    assert [dirlab.COPD_TABLE[f"copd{i}"].shape_xyz[2] for i in range(1, 11)] == \
        [121, 102, 126, 126, 131, 119, 112, 115, 116, 135]
    assert dirlab.FOURDCT_TABLE["case1"] == dirlab.CaseGeometry((256, 256, 94), (0.97, 0.97, 2.5))
    for name in ("4dct", "copd"):
        prefix = "case" if name == "4dct" else "copd"
        values = [dirlab.PUBLISHED_INITIAL_ERROR_MM[f"{prefix}{i}"] for i in range(1, 11)]
        assert np.mean(values) == pytest.approx(
            dirlab.PUBLISHED_SET_MEAN_INITIAL_ERROR_MM[name], abs=0.005)


def test_cli_subparser_and_module(fake_root, tmp_path):
    import argparse

    root, table, _ = fake_root
    parser = argparse.ArgumentParser(prog="nephi-prep")
    add_command(parser.add_subparsers(dest="command"), "dirlab")
    out = tmp_path / "cli"
    args = parser.parse_args(["dirlab", str(root), "--out", str(out), "--cases", "copd1",
                              "--table", str(table), "--hu-offset", "0"])
    assert args.func(args) == 0
    assert (out / "copd1" / "copd1_inhale.nii.gz").is_file()
    assert not (out / "case3").exists()

    out2 = tmp_path / "module"
    proc = subprocess.run([sys.executable, "-m", "data_prep.dirlab", str(root), "--out", str(out2),
                           "--table", str(table)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out2 / "pairs.csv").is_file() and "copd1" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "data_prep.dirlab", str(root), "--out", str(out2)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "does not match" in proc.stderr
