"""Bad input to ``nephi-infer`` gives ONE line on stderr naming the file or option and the
problem, exit status 2, no traceback, and nothing in the output folder (no hidden
``.DIR.partial-*`` folder next to it either). A failure or Ctrl-C after optimization leaves
nothing behind.

Most cases call ``infer.main.main(argv)`` in-process (fast); a few run the real console entry
point in a subprocess to prove that no traceback reaches stderr.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nephi.cli.infer import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHAPE = (8, 8, 8)
# Tiny, fast settings for the runs that must get past the cheap checks.
FAST = ["--io-steps", "1", "--points", "16", "--reg-points", "8", "--no-progress",
        "--set", "model.hidden=16", "--set", "model.fourier_features=8",
        "--set", "model.latent_grid=4", "--set", "model.latent_channels=4"]


def write_nifti(path, data, affine=None) -> str:
    affine = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


def blob(shape=SHAPE, shift=0.0) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g - shift) ** 2 for g in grids)
    return (100.0 * np.exp(-3.0 * r2)).astype(np.float32)


@pytest.fixture
def case(tmp_path):
    """A valid tiny pair, an output folder path that does not exist yet, and a runner."""

    class Case:
        root = tmp_path
        moving = write_nifti(tmp_path / "moving.nii.gz", blob(shift=0.1))
        fixed = write_nifti(tmp_path / "fixed.nii.gz", blob())
        out = str(tmp_path / "result")

        def argv(self, moving=None, fixed=None, extra=()):
            return ["--pair", moving or self.moving, fixed or self.fixed, "--out", self.out,
                    *FAST, *extra]

    return Case()


def run_inprocess(argv, capsys) -> tuple:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors exit through sys.exit(2)
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.err


def run_subprocess(argv) -> tuple:
    env = dict(os.environ, PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "infer.main", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr


def assert_rejected(rc, err, out_dir, names, existed_before=None):
    """Status 2, exactly one non-empty stderr line naming every string in ``names``, no
    traceback, and the output folder untouched (absent, or as it was), no partial folder."""
    assert rc == 2, f"exit status {rc}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"want one stderr line, got {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith("nephi-infer: error: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    if existed_before is None:
        assert not os.path.exists(out_dir), f"{out_dir} was created"
    else:
        assert sorted(os.listdir(out_dir)) == existed_before
    parent = os.path.dirname(os.path.abspath(out_dir))
    leftovers = [n for n in os.listdir(parent) if ".partial" in n]
    assert not leftovers, f"partial folders left: {leftovers}"


# ---------------------------------------------------------------- files that are not images


def test_missing_moving_file(case, capsys):
    missing = str(case.root / "nope.nii.gz")
    rc, err = run_inprocess(case.argv(moving=missing), capsys)
    assert_rejected(rc, err, case.out, ["nope.nii.gz", "not found"])


def test_missing_fixed_file_subprocess(case):
    missing = str(case.root / "absent_fixed.nii")
    rc, err = run_subprocess(case.argv(fixed=missing))
    assert_rejected(rc, err, case.out, ["absent_fixed.nii", "not found"])


def test_text_file_named_nii_gz(case, capsys):
    path = case.root / "x.nii.gz"
    path.write_text("this is not an image\n")
    rc, err = run_inprocess(case.argv(moving=str(path)), capsys)
    assert_rejected(rc, err, case.out, ["x.nii.gz", "NIfTI"])


def test_random_bytes_nii_subprocess(case):
    path = case.root / "noise.nii"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    rc, err = run_subprocess(case.argv(fixed=str(path)))
    assert_rejected(rc, err, case.out, ["noise.nii", "NIfTI"])


def test_random_bytes_gzipped(case, capsys):
    path = case.root / "noise.nii.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(1).bytes(4000)))
    rc, err = run_inprocess(case.argv(fixed=str(path)), capsys)
    assert_rejected(rc, err, case.out, ["noise.nii.gz"])


def test_empty_file(case, capsys):
    path = case.root / "empty.nii"
    path.write_bytes(b"")
    rc, err = run_inprocess(case.argv(moving=str(path)), capsys)
    assert_rejected(rc, err, case.out, ["empty.nii"])


def test_folder_given_as_image(case, capsys):
    folder = case.root / "adir.nii.gz"
    folder.mkdir()
    rc, err = run_inprocess(case.argv(moving=str(folder)), capsys)
    assert_rejected(rc, err, case.out, ["adir.nii.gz", "folder"])


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.1])
def test_truncated_gzip_nifti(case, capsys, fraction):
    rng = np.random.default_rng(2)
    full = write_nifti(case.root / "full.nii.gz", rng.normal(size=(16, 16, 16)))
    data = Path(full).read_bytes()
    cut = case.root / "cut.nii.gz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    rc, err = run_inprocess(case.argv(moving=str(cut)), capsys)
    assert_rejected(rc, err, case.out, ["cut.nii.gz"])


def test_truncated_gzip_nifti_subprocess(case):
    rng = np.random.default_rng(3)
    full = write_nifti(case.root / "full.nii.gz", rng.normal(size=(16, 16, 16)))
    data = Path(full).read_bytes()
    cut = case.root / "half.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    rc, err = run_subprocess(case.argv(fixed=str(cut)))
    assert_rejected(rc, err, case.out, ["half.nii.gz"])


def test_truncated_plain_nifti(case, capsys):
    full = write_nifti(case.root / "full.nii", blob())
    data = Path(full).read_bytes()
    cut = case.root / "short.nii"
    cut.write_bytes(data[: 352 + 100])
    rc, err = run_inprocess(case.argv(moving=str(cut)), capsys)
    assert_rejected(rc, err, case.out, ["short.nii"])


def test_corrupt_header_quiet_subprocess(case):
    """A header nibabel 'fixes' (it logs that straight to stderr) and whose data lies beyond
    the end of the file: still one line, the logged fix is held back."""
    import struct

    full = write_nifti(case.root / "full.nii", blob())
    data = bytearray(Path(full).read_bytes())
    data[252:254] = struct.pack("<h", 77)          # invalid qform_code: nibabel logs a fix
    data[108:112] = struct.pack("<f", 100000.0)    # vox_offset past the end of the file
    bad = case.root / "damaged.nii"
    bad.write_bytes(bytes(data))
    rc, err = run_subprocess(case.argv(moving=str(bad)))
    assert_rejected(rc, err, case.out, ["damaged.nii", "corrupt"])
    assert "qform_code" not in err


# ---------------------------------------------------------------- images of the wrong kind


def test_four_d_image(case, capsys):
    path = write_nifti(case.root / "fourd.nii.gz", np.zeros((8, 8, 8, 3)))
    rc, err = run_inprocess(case.argv(moving=path), capsys)
    assert_rejected(rc, err, case.out, ["fourd.nii.gz", "4-D"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_voxels(case, capsys, bad):
    data = blob()
    data[3, 4, 5] = bad
    path = write_nifti(case.root / "nonfinite.nii.gz", data)
    rc, err = run_inprocess(case.argv(fixed=path), capsys)
    assert_rejected(rc, err, case.out, ["nonfinite.nii.gz", "NaN"])


def test_two_d_with_three_d(case, capsys):
    flat = write_nifti(case.root / "flat.nii.gz", blob((8, 8)))
    rc, err = run_inprocess(case.argv(moving=flat), capsys)
    assert_rejected(rc, err, case.out, ["flat.nii.gz", "2-D", "3-D"])


def test_mask_of_other_shape(case, capsys):
    mask = write_nifti(case.root / "mask_small.nii.gz", np.ones((6, 8, 8)))
    rc, err = run_inprocess(case.argv(extra=["--mask", mask]), capsys)
    assert_rejected(rc, err, case.out, ["mask_small.nii.gz", "shape"])


def test_mask_with_no_voxel_set(case, capsys):
    mask = write_nifti(case.root / "mask_empty.nii.gz", np.zeros(SHAPE))
    rc, err = run_inprocess(case.argv(extra=["--mask", mask]), capsys)
    assert_rejected(rc, err, case.out, ["mask_empty.nii.gz", "no voxel"])


def test_missing_mask(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--mask", str(case.root / "m.nii.gz")]), capsys)
    assert_rejected(rc, err, case.out, ["m.nii.gz", "not found"])


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("option,value", [
    ("--io-steps", "-3"), ("--io-steps", "0"),
    ("--points", "0"), ("--points", "-16"),
    ("--reg-points", "0"), ("--reg-points", "-1"),
    ("--lr", "0"), ("--lr", "-0.001"), ("--lr", "nan"), ("--lr", "inf"),
])
def test_non_positive_options(case, capsys, option, value):
    rc, err = run_inprocess(case.argv(extra=[option, value]), capsys)
    assert_rejected(rc, err, case.out, [option])


@pytest.mark.parametrize("option,value", [("--io-steps", "many"), ("--points", "1.5"),
                                          ("--lr", "fast")])
def test_option_of_wrong_type(case, capsys, option, value):
    rc, err = run_inprocess(case.argv(extra=[option, value]), capsys)
    assert_rejected(rc, err, case.out, [option])


def test_non_positive_steps_subprocess(case):
    rc, err = run_subprocess(case.argv(extra=["--io-steps", "-1"]))
    assert_rejected(rc, err, case.out, ["--io-steps"])


def test_steps_zero_through_set(case, capsys):
    argv = case.argv(extra=["--set", "optim.steps=0"])
    del argv[argv.index("--io-steps"):argv.index("--io-steps") + 2]
    rc, err = run_inprocess(argv, capsys)
    assert_rejected(rc, err, case.out, ["optim.steps"])


def test_out_is_an_existing_file(case, capsys):
    Path(case.out).write_text("keep me")
    rc, err = run_inprocess(case.argv(), capsys)
    assert rc == 2
    assert Path(case.out).read_text(encoding="utf-8") == "keep me"
    lines = err.splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in err
    assert not [n for n in os.listdir(case.root) if ".partial" in n]


def test_out_under_a_file(case, capsys):
    Path(case.root / "plain").write_text("x")
    out = str(case.root / "plain" / "sub")
    argv = case.argv()
    argv[argv.index("--out") + 1] = out
    rc, err = run_inprocess(argv, capsys)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "--out" in lines[0] and "Traceback" not in err
    assert not [n for n in os.listdir(case.root) if ".partial" in n]


def test_empty_out(case, capsys, monkeypatch):
    monkeypatch.chdir(case.root)  # an empty --out must not mean "the current folder"
    argv = case.argv()
    argv[argv.index("--out") + 1] = ""
    before = sorted(os.listdir(case.root))
    rc, err = run_inprocess(argv, capsys)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "--out" in lines[0] and "Traceback" not in err
    assert sorted(os.listdir(case.root)) == before


def test_existing_out_folder_left_unchanged(case, capsys):
    os.makedirs(case.out)
    Path(case.out, "old.txt").write_text("old")
    missing = str(case.root / "gone.nii.gz")
    rc, err = run_inprocess(case.argv(moving=missing), capsys)
    assert_rejected(rc, err, case.out, ["gone.nii.gz"], existed_before=["old.txt"])


def test_unknown_set_key(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "optim.stepz=3"]), capsys)
    assert_rejected(rc, err, case.out, ["optim.stepz", "unknown"])


def test_set_without_equals(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "optim.steps"]), capsys)
    assert_rejected(rc, err, case.out, ["optim.steps"])


def test_set_of_wrong_type(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "optim.points=lots"]), capsys)
    assert_rejected(rc, err, case.out, ["optim.points"])


def test_set_of_a_word_yaml_reads_as_a_boolean(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "io.lr_schedule=off"]), capsys)
    assert_rejected(rc, err, case.out, ["io.lr_schedule", "must be a string", "quote the word"])


def test_bad_yaml_config(case, capsys):
    cfg = case.root / "broken.yaml"
    cfg.write_text("optim:\n  steps: [1, 2\n  lr: : :\n")
    rc, err = run_inprocess(case.argv(extra=["--config", str(cfg)]), capsys)
    assert_rejected(rc, err, case.out, ["broken.yaml", "YAML"])


def test_yaml_config_with_unknown_key(case, capsys):
    cfg = case.root / "unknown.yaml"
    cfg.write_text("optim:\n  speed: 3\n")
    rc, err = run_inprocess(case.argv(extra=["--config", str(cfg)]), capsys)
    assert_rejected(rc, err, case.out, ["unknown.yaml", "optim.speed"])


def test_binary_config_file(case, capsys):
    cfg = case.root / "binary.yaml"
    cfg.write_bytes(b"\xff\xfe\x00\x81garbage\x00\x9c")
    rc, err = run_inprocess(case.argv(extra=["--config", str(cfg)]), capsys)
    assert_rejected(rc, err, case.out, ["binary.yaml"])


def test_missing_config_file(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--config", str(case.root / "c.yaml")]), capsys)
    assert_rejected(rc, err, case.out, ["c.yaml"])


def test_bad_yaml_config_subprocess(case):
    cfg = case.root / "bad_sub.yaml"
    cfg.write_text("{{{{ not: yaml\n")
    rc, err = run_subprocess(case.argv(extra=["--config", str(cfg)]))
    assert_rejected(rc, err, case.out, ["bad_sub.yaml"])


def test_missing_landmarks_file(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--landmarks", str(case.root / "lm.csv")]), capsys)
    assert_rejected(rc, err, case.out, ["lm.csv", "not found"])


def test_binary_landmarks_file(case, capsys):
    lm = case.root / "lm_bin.csv"
    lm.write_bytes(b"\xff\xfe\x00\x81\x00\x00x,y,z\n\x9c")
    rc, err = run_inprocess(case.argv(extra=["--landmarks", str(lm)]), capsys)
    assert_rejected(rc, err, case.out, ["lm_bin.csv"])


def test_landmarks_file_with_bad_rows(case, capsys):
    lm = case.root / "lm_rows.csv"
    lm.write_text("x,y,z\n1,2,3\n4,five,6\n")
    rc, err = run_inprocess(case.argv(extra=["--landmarks", str(lm)]), capsys)
    assert_rejected(rc, err, case.out, ["lm_rows.csv", "line 3"])


def test_missing_required_option(case, capsys):
    rc, err = run_inprocess(["--pair", case.moving, case.fixed], capsys)
    assert_rejected(rc, err, case.out, ["--out"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--device", "cuda"]), capsys)
    assert_rejected(rc, err, case.out, ["--device", "CUDA"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_through_set(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "device=cuda"]), capsys)
    assert_rejected(rc, err, case.out, ["CUDA"])


def test_device_unknown_through_set(case, capsys):
    rc, err = run_inprocess(case.argv(extra=["--set", "device=tpu"]), capsys)
    assert_rejected(rc, err, case.out, ["tpu"])


# ---------------------------------------------------------------- failures after optimization


def test_writer_failure_removes_partial_folder(case, monkeypatch):
    """An exception while writing (after IO) leaves neither DIR nor a partial folder."""
    import nephi.pipeline.pairwise as reg
    import nephi.results.result as result_module
    from nephi.cli.infer import build_parser, resolve_config

    calls = []

    def broken_writer(path, *args, **kwargs):
        calls.append(path)
        open(path, "wb").close()  # something half-written is already in the partial folder
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(result_module, "write_displacement_field", broken_writer)
    cfg = resolve_config(build_parser().parse_args(case.argv()))
    pair = reg.LoadedPair(case.moving, case.fixed)
    with pytest.raises(OSError, match="disk full"):
        reg.register(pair, case.out, cfg, progress=False)
    assert calls and ".partial-" in calls[0]
    assert not os.path.exists(case.out)
    assert not [n for n in os.listdir(case.root) if ".partial" in n]


def test_ctrl_c_while_writing_leaves_nothing(case, capsys, monkeypatch):
    import nephi.results.result as reg

    def interrupted(path, *args, **kwargs):
        open(path, "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(reg, "save_scalar", interrupted)
    rc = main(case.argv())
    err = capsys.readouterr().err
    assert rc == 130
    lines = err.splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err
    assert not os.path.exists(case.out)
    assert not [n for n in os.listdir(case.root) if ".partial" in n]


def test_ctrl_c_during_optimization_keeps_existing_folder(case, capsys, monkeypatch):
    import nephi.pipeline.pairwise as reg

    os.makedirs(case.out)
    Path(case.out, "previous.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reg, "instance_optimize", interrupted)
    rc = main(case.argv())
    err = capsys.readouterr().err
    assert rc == 130 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert os.listdir(case.out) == ["previous.json"]
    assert not [n for n in os.listdir(case.root) if ".partial" in n]


def test_good_input_still_runs(case, capsys):
    """The checks do not reject a valid tiny run (guards against over-eager validation)."""
    mask = write_nifti(case.root / "mask.nii.gz", blob() > 10)
    lm = case.root / "lm.csv"
    lm.write_text("x,y,z\n1.0,2.0,3.0\n-1.0,0.5,0.0\n")
    rc = main(case.argv(extra=["--mask", mask, "--landmarks", str(lm)]))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert {"warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "jacobian.nii.gz",
            "summary.json", "landmarks_moving.csv"} <= set(os.listdir(case.out))
    assert not [n for n in os.listdir(case.root) if ".partial" in n]
