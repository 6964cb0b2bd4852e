"""Learning-based NePhi: encoder, HDF5 pair files, nephi-prep, DDP training with accelerate,
exact resumption and feed-forward inference with ``nephi-infer --checkpoint``.

The training runs use configs/smoke.yaml on 32 x 32 Triangles-and-Circles pairs made here; the
2-process run goes through ``accelerate launch --multi_gpu --num_processes 2`` on the CPU and
checks that both processes hold the same parameters (gradients synchronized).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nephi.cli.prep import main as prep_main
from nephi.data.pairfile import PairDataset, PairFile
from nephi.data.preprocess import PrepConfig, network_grid, read_pairs_csv
from nephi.models.encoder import EncoderConfig, Encoder, RegistrationNet, branch_level
from nephi.geometry.grid import Grid
from nephi.models.fields import FieldConfig
from nephi.learn.trainer import StepBatches, lr_factor, param_hash
from nephi.models.checkpoint import load_checkpoint
from nephi.config.loader import resolve_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
TRAIN = str(REPO / "train" / "train.py")
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd: list, cwd) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _launch(args: list, cwd) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", TRAIN,
           *args]
    return _run(cmd, cwd)


def _replicas(run_dir: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("replica_rank*.json"))]


# ----------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("shape, level, grid", [
    ((512, 512), 5, (16, 16)),
    ((128, 128), 3, (16, 16)),
    ((32, 32), 1, (16, 16)),
    ((100, 60), 2, (25, 15)),
    ((175, 175, 175), 3, (22, 22, 22)),
    ((64, 64, 64), 2, (16, 16, 16)),
    ((40, 48, 36), 1, (20, 24, 18)),
])
def test_branch_point_closest_to_16(shape, level, grid):
    cfg = EncoderConfig(input_shape=list(shape))
    assert cfg.branch == level == branch_level(shape, cfg.levels, 16)
    assert cfg.local_grid == grid


@pytest.mark.parametrize("shape", [(64, 48), (24, 20, 28), (40, 48, 36)])
def test_encoder_output_shapes(shape):
    cfg = EncoderConfig(input_shape=list(shape), channels=[4, 4, 8, 8, 8, 8], latent_channels=6,
                        groups=2)
    enc = Encoder(cfg)
    x = torch.rand(3, 1, *shape)
    latent = enc(x, x)
    assert latent.global_.shape == (3, 6)
    assert latent.local.shape == (3, 6, *cfg.local_grid)
    net = RegistrationNet(cfg, FieldConfig(ndim=len(shape), latent_channels=6, hidden=8,
                                           fourier_features=4))
    pts = torch.rand(3, 10, len(shape)) * 2 - 1
    assert net.fields.phi_ab(pts, net.encode(x, x)).shape == (3, 10, len(shape))
    assert torch.allclose(net.fields.phi_ab(pts, latent), pts)  # identity at initialization


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


# ----------------------------------------------------------------------------- schedule, batches
def test_lr_schedule_and_step_batches():
    cfg = resolve_config("train", SMOKE, ["train.steps=100", "train.warmup_steps=10",
                                 "train.min_lr_ratio=0.1", "train.lr=5e-4"])
    assert cfg["train"]["lr"] == 5e-4  # YAML 1.1 reads '5e-4' as text; overrides take it
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(0.1)
    full = list(StepBatches(10, 2, rank=1, world=2, start=0, stop=6, seed=3))
    tail = list(StepBatches(10, 2, rank=1, world=2, start=4, stop=6, seed=3))
    assert full[4:] == tail  # resumption sees the same batches
    other = list(StepBatches(10, 2, rank=0, world=2, start=0, stop=6, seed=3))
    first_epoch = sorted(other[0] + full[0] + other[1] + full[1] + other[2])
    assert first_epoch == list(range(10))  # ranks share out each epoch


# ----------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def tc_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcdata")
    out = root / "tc32.h5"
    assert prep_main(["triangles-circles", "--n", "16", "--size", "32", "--mode", "solid",
                      "--val-fraction", "0.25", "--out", str(out)]) == 0
    nifti = root / "nifti"
    assert prep_main(["triangles-circles", "--n", "2", "--size", "40", "--seed", "7",
                      "--out", str(nifti)]) == 0
    return out, nifti


@pytest.fixture(scope="module")
def ddp_run(tc_data, tmp_path_factory):
    """Two CPU processes, 4 steps, then --resume to 6 steps."""
    data, _ = tc_data
    run = tmp_path_factory.mktemp("ddp") / "run"
    first = _launch(["--config", SMOKE, "--output-dir", str(run), f"data.path={data}",
                     "train.progress=false"], run.parent)
    after_first = _replicas(run)
    resumed = _launch(["--config", SMOKE, "--output-dir", str(run), "--resume", "train.steps=6",
                       "train.progress=false"], run.parent)
    return run, first, after_first, resumed


def test_ddp_two_processes_stay_in_sync_and_resume(ddp_run):
    run, first, after_first, resumed = ddp_run
    assert [r["rank"] for r in after_first] == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 4 for r in after_first)
    assert after_first[0]["param_sha256"] == after_first[1]["param_sha256"]
    assert "resuming from" in resumed.stdout and "(step 4)" in resumed.stdout
    final = _replicas(run)
    assert all(r["step"] == 6 for r in final)
    assert final[0]["param_sha256"] == final[1]["param_sha256"]
    assert final[0]["param_sha256"] != after_first[0]["param_sha256"]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "step_00000004.pt", "step_00000006.pt"]  # keep_last 2
    ckpt = load_checkpoint(str(run / "checkpoints" / "step_00000006.pt"))
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    assert ckpt["scheduler"]["last_epoch"] == 6
    assert ckpt["config"]["train"]["steps"] == 6 and "nephi" in ckpt["code_version"]
    assert ckpt["preprocessing"]["shape"] == [32, 32]
    assert "val/dice" in ckpt["metrics"] and "val/folding_percent" in ckpt["metrics"]
    assert (run / "config.yaml").is_file() and list((run / "tensorboard").iterdir())


def test_resume_is_exact(tc_data, tmp_path):
    """6 steps straight == 4 steps, interruption, resume to 6 (same schedule): same weights."""
    data, _ = tc_data
    common = ["--config", SMOKE, f"data.path={data}", "train.progress=false", "train.steps=6",
              "val.every=100"]
    _run([sys.executable, TRAIN, *common, "--output-dir", str(tmp_path / "a")], tmp_path)
    os.remove(tmp_path / "a" / "checkpoints" / "step_00000006.pt")
    straight = _replicas(tmp_path / "a")[0]["param_sha256"]
    _run([sys.executable, TRAIN, "--output-dir", str(tmp_path / "a"), "--resume",
          "train.progress=false"], tmp_path)
    assert _replicas(tmp_path / "a")[0]["param_sha256"] == straight


def test_existing_run_needs_resume(ddp_run, capsys):
    from nephi.cli.train import main as train_main

    assert train_main(["--config", SMOKE, "--output-dir", str(ddp_run[0])]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- inference
def test_infer_checkpoint_single_pair(ddp_run, tc_data, tmp_path):
    from nephi.cli.infer import main as infer_main
    from nephi.pipeline.feedforward import load_model

    run = ddp_run[0]
    _, nifti = tc_data
    ckpt = str(run / "checkpoints" / "step_00000006.pt")
    model = load_model(ckpt)
    before = param_hash(model.net)
    pair = [str(nifti / "pair_0000" / "moving.nii.gz"), str(nifti / "pair_0000" / "fixed.nii.gz")]
    out = tmp_path / "ff"
    assert infer_main(["--checkpoint", ckpt, "--pair", *pair, "--out", str(out),
                       "--no-progress", "--device", "cpu"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "jacobian.nii.gz",
            "summary.json"} <= names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["io_steps"] == 0 and summary["mode"] == "feedforward"
    assert summary["feedforward_seconds"] > 0 and summary["checkpoint_step"] == 6
    assert summary["network_grid"]["shape"] == [32, 32]
    warp = nib.load(str(out / "warp.nii.gz"))
    assert warp.shape == (40, 40, 1, 1, 2)  # the original fixed grid, not the network grid

    out_io = tmp_path / "ff_io"
    assert infer_main(["--checkpoint", ckpt, "--pair", *pair, "--out", str(out_io),
                       "--io-steps", "2", "--io-params", "all", "--points", "64",
                       "--reg-points", "16", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out_io / "summary.json").read_text())
    assert summary["io_steps"] == 2 and summary["io_params"] == "all"
    assert param_hash(load_model(ckpt).net) == before


def test_infer_pairs_csv(ddp_run, tc_data, tmp_path, capsys):
    from nephi.cli.infer import main as infer_main

    run = ddp_run[0]
    _, nifti = tc_data
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("moving,fixed\n" + "".join(
        f"{nifti}/pair_{k:04d}/moving.nii.gz,{nifti}/pair_{k:04d}/fixed.nii.gz\n"
        for k in range(2)))
    out = tmp_path / "many"
    argv = ["--checkpoint", str(run / "checkpoints" / "best.pt"), "--pairs", str(csv_path),
            "--out", str(out), "--no-progress", "--device", "cpu"]
    assert infer_main(argv) == 0
    assert (out / "pair_0001" / "warp.nii.gz").is_file()
    assert (out / "pair_0002" / "summary.json").is_file()
    capsys.readouterr()
    assert infer_main(argv) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert (out / "pairs_summary.csv").read_text().count("skipped") == 2


def test_option_errors_are_one_line(ddp_run, tc_data, tmp_path, capsys):
    from nephi.cli.infer import main as infer_main
    from nephi.cli.train import main as train_main

    ckpt = str(ddp_run[0] / "checkpoints" / "best.pt")
    _, nifti = tc_data
    pair = [str(nifti / "pair_0000" / "moving.nii.gz"), str(nifti / "pair_0000" / "fixed.nii.gz")]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "out")
    cases = [
        (["--pairs", "pairs.csv", "--out", out], "--pairs: needs --checkpoint"),
        (["--pair", *pair, "--pairs", "p.csv", "--checkpoint", ckpt, "--out", out], "one of"),
        (["--checkpoint", str(bad), "--pair", *pair, "--out", out], "not a readable checkpoint"),
        (["--pair", *pair, "--out", out, "--io-params", "all"], "--io-params: needs --checkpoint"),
        (["--checkpoint", ckpt, "--pair", *pair, "--out", out, "--io-steps", "-1"], "--io-steps"),
    ]
    for argv, message in cases:
        assert infer_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(out)
    assert train_main(["--config", SMOKE, "train.bogus=1"]) == 2
    assert "unknown key 'train.bogus'" in capsys.readouterr().err
