"""``nephi-prep scans``: training pairs drawn among unpaired scans (MNI152 T1 heads at 6 mm with
different random deformations as subjects): pair counts, a validation split by subject,
intra-subject pairs whose stored landmarks map onto each other under the known deformation,
reproducibility, one-line errors."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import pytest
import torch

from nephi.cli.prep import main as prep_main
from nephi.data.builders import intra_deformation
from nephi.data.pairfile import PairFile
from nephi.io.images import save_image
from nephi.io.points import save_points

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                reason="nilearn (MNI152 template) is not installed")

SUBJECTS = ["A", "A", "B", "C", "D"]  # subject A has two scans
POINTS = [12, 12, 12, 9, 0]  # landmark counts (0: no points file)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """scans.csv of five head scans (image, mask, label, points except the last)."""
    from nephi.data.real_scans import make_pair, mni152

    template = mni152(spacing=6.0)
    root = tmp_path_factory.mktemp("cohort")
    lines = ["name,image,mask,label,points,subject"]
    for k, (subject, count) in enumerate(zip(SUBJECTS, POINTS)):
        scan = make_pair(template, max_mm=6.0, seed=k, n_landmarks=max(count, 1))
        name = f"s{k}"
        for part, data, dtype in (("", scan.moving, np.float32),
                                  ("_mask", scan.moving_mask, np.uint8),
                                  ("_label", scan.moving_labels, np.int16)):
            save_image(str(root / f"{name}{part}.nii.gz"), data, scan.moving_grid, dtype=dtype)
        points = ""
        if count:
            assert len(scan.moving_points) >= count
            save_points(str(root / f"{name}_points.csv"), scan.moving_points[:count])
            points = f"{name}_points.csv"
        lines.append(f"{name},{name}.nii.gz,{name}_mask.nii.gz,{name}_label.nii.gz,{points},"
                     f"{subject}")
    csv_path = root / "scans.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path


def _build(csv_path, out, *extra) -> PairFile:
    assert prep_main(["scans", "--csv", str(csv_path), "--out", str(out), "--pairs-per-scan",
                      "2", "--intra", "1", "--intra-max-mm", "12", "--val-fraction", "0.25",
                      "--spacing", "6", *extra]) == 0
    return PairFile(str(out))


def test_pairs_split_by_subject_and_intra_pairs_follow_the_known_map(cohort, tmp_path):
    data = _build(cohort, tmp_path / "scans.h5")
    subject = dict(zip([f"s{k}" for k in range(5)], SUBJECTS))
    sides = {}
    for split, names in data.splits.items():
        for name in names:
            for scan in name.replace("__deformed_0", "").split("__"):
                sides.setdefault(subject[scan], set()).add(split)
    assert all(len(s) == 1 for s in sides.values())  # no subject on both sides
    assert sum(s == {"val"} for s in sides.values()) == 1  # 1 of 4 subjects
    for names in data.splits.values():
        scans = {n.split("__")[1] for n in names if "deformed" not in n}
        intra = [n for n in names if n.endswith("__deformed_0")]
        inter = [n for n in names if "deformed" not in n]
        n_scans = len({n.split("__")[0] for n in intra})
        assert len(intra) == n_scans and len(inter) == n_scans * min(2, n_scans - 1)
        assert all(len(set(n.split("__"))) == 2 for n in inter) and scans <= {
            n.split("__")[0] for n in intra}
    for name in data.splits["train"] + data.splits["val"]:
        arrays = data.read(name)
        first, second = (name.split("__") + [""])[:2]
        counts = {POINTS[int(s[1:])] for s in (first, second) if s.startswith("s")}
        if "deformed" in name:
            counts = {POINTS[int(first[1:])]}
        assert ("fixed_points" in arrays) == (len(counts) == 1 and 0 not in counts), name
        assert {"moving_mask", "fixed_mask", "moving_label", "fixed_label"} <= set(arrays)

    intra = [n for n in data.splits["train"] + data.splits["val"]
             if n.endswith("deformed_0") and "fixed_points" in data.read(n)]
    assert intra
    for name in intra:
        arrays, grid = data.read(name), data.grid(name)
        seed = int(re.search(r"seed=(\d+)", data.attrs(name)["source"]).group(1))
        known = intra_deformation(grid, 12.0, 40.0, seed)
        moving = torch.as_tensor(grid.ras_to_normalized_points(arrays["moving_points"]))[None]
        mapped = grid.normalized_to_ras_points(known(moving)[0].numpy())
        error = np.linalg.norm(mapped - arrays["fixed_points"], axis=1)
        assert error.max() < 0.3 and error.mean() < 0.1  # mm: 1/20 and 1/60 of a 6 mm voxel
        shift = np.linalg.norm(arrays["moving_points"] - arrays["fixed_points"], axis=1)
        assert shift.max() > 1.0  # the deformation moved them
        # the moving image is the fixed one pulled back by the same map: I_A = I_B o T, so
        # I_A(moving point) = I_B(T(moving point)) = I_B(fixed point)
        fixed = torch.as_tensor(arrays["fixed"])[None, None]
        assert np.allclose(known.resample(fixed)[0, 0].numpy(), arrays["moving"], atol=1e-5)
        assert np.abs(arrays["moving"] - arrays["fixed"]).mean() > 0.01


def test_scans_reproducible_with_seed(cohort, tmp_path):
    a = _build(cohort, tmp_path / "a.h5")
    b = _build(cohort, tmp_path / "b.h5")
    c = _build(cohort, tmp_path / "c.h5", "--seed", "5")
    assert a.splits == b.splits
    for name in a.splits["train"]:
        assert np.array_equal(a.read(name)["moving"], b.read(name)["moving"])
    deformed = [n for n in a.splits["train"] if "deformed" in n][0]
    assert a.splits != c.splits or not np.array_equal(a.read(deformed)["moving"],
                                                      c.read(deformed)["moving"])


def test_scans_errors_are_one_line(cohort, tmp_path, capsys):
    root = cohort.parent
    bad_column = tmp_path / "bad_column.csv"
    bad_column.write_text("scan,mask\ns0.nii.gz,\n", encoding="utf-8")
    missing = tmp_path / "missing.csv"
    missing.write_text(f"image,mask\n{root}/s0.nii.gz,\n{root}/nowhere.nii.gz,\n",
                       encoding="utf-8")
    single = tmp_path / "single.csv"
    single.write_text(f"image\n{root}/s0.nii.gz\n", encoding="utf-8")
    out = tmp_path / "out.h5"
    cases = [
        (["--csv", str(bad_column)], "needs a header with columns image"),
        (["--csv", str(missing)], "line 3: image"),
        (["--csv", str(tmp_path / "none.csv")], "scans CSV"),
        (["--csv", str(cohort), "--intra", "-1"], "--intra: must be >= 0"),
        (["--csv", str(single)], "no pair to write"),
    ]
    for argv, message in cases:
        assert prep_main(["scans", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not os.path.exists(out) and not os.path.exists(f"{out}.partial")
