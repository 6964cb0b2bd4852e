"""Learning-based NePhi end to end: DDP training with accelerate, exact resumption and
feed-forward inference with ``nephi-infer --checkpoint``. (The encoder, HDF5 pair file and
schedule tests are in tests/unit/models/test_encoder.py, tests/unit/data/test_pairfile.py and
tests/unit/learn/test_schedule.py.)

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
import pytest
import torch

from nephi.cli.prep import main as prep_main
from nephi.learn.trainer import param_hash
from nephi.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
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
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(run_dir.glob("replica_rank*.json"))]


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
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["io_steps"] == 0 and summary["mode"] == "feedforward"
    assert summary["feedforward_seconds"] > 0 and summary["checkpoint_step"] == 6
    assert summary["network_grid"]["shape"] == [32, 32]
    warp = nib.load(str(out / "warp.nii.gz"))
    assert warp.shape == (40, 40, 1, 1, 2)  # the original fixed grid, not the network grid

    out_io = tmp_path / "ff_io"
    assert infer_main(["--checkpoint", ckpt, "--pair", *pair, "--out", str(out_io),
                       "--io-steps", "2", "--io-params", "all", "--points", "64",
                       "--reg-points", "16", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out_io / "summary.json").read_text(encoding="utf-8"))
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
    assert (out / "summary.csv").read_text(encoding="utf-8").count("skipped") == 2


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
        (["--pairs", "pairs.csv", "--out", out], "pairs CSV pairs.csv: file not found"),
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
    if not torch.cuda.is_available():
        run_dir = tmp_path / "bf16_run"
        assert train_main(["--config", SMOKE, "--output-dir", str(run_dir),
                           "train.mixed_precision=bf16"]) == 2
        err = capsys.readouterr().err
        assert "config key train.mixed_precision: bf16 is for CUDA" in err
        assert err.count("\n") == 1 and not run_dir.exists()


def test_alignment_in_front_of_the_network(ddp_run, tc_data, tmp_path):
    """--checkpoint with --align rigid: the encoder sees the moving image through the rigid
    alignment and the exported map is that alignment composed with the network's field. On a
    pair whose moving image is the fixed one turned by 12 degrees and shifted (header only), the
    map recovers the motion, which --align none (the default with --checkpoint) does not."""
    import numpy as np

    from nephi.cli.infer import main as infer_main
    from nephi.io.fields import read_displacement_field

    ckpt = str(ddp_run[0] / "checkpoints" / "best.pt")
    _, nifti = tc_data
    fixed = nib.load(str(nifti / "pair_0000" / "fixed.nii.gz"))
    a = np.radians(12.0)
    centre = fixed.affine[:3, :3] @ np.array([19.5, 19.5, 0.0]) + fixed.affine[:3, 3]
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    motion[:3, 3] = centre - motion[:3, :3] @ centre + [2.5, -1.5, 0.0]
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(fixed.get_fdata().astype(np.float32), motion @ fixed.affine), moved)
    errors = {}
    for align in ("none", "rigid"):
        out = tmp_path / align
        assert infer_main(["--checkpoint", ckpt, "--pair", str(moved),
                           str(nifti / "pair_0000" / "fixed.nii.gz"), "--out", str(out),
                           "--align", align, "--no-progress", "--device", "cpu"]) == 0
        disp, grid = read_displacement_field(str(out / "warp.nii.gz"))
        pts = grid.index_to_ras_points(np.argwhere(np.ones(grid.shape, bool))[::7].astype(float))
        idx = np.rint(grid.ras_to_index_points(pts)).astype(int)
        mapped = pts + disp[tuple(idx.T)]
        truth = pts @ motion[:2, :2].T + motion[:2, 3]
        errors[align] = float(np.linalg.norm(mapped - truth, axis=1).mean())
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert ("align" in summary) == (align != "none")
    assert errors["rigid"] < 0.5 and errors["none"] > 2.0, errors


def test_two_machines_train_one_model(tc_data, tmp_path):
    """The multi-node recipe on one host: two ``accelerate launch`` calls, one per "machine"
    (``--num_machines 2 --machine_rank 0/1``, rendezvous on 127.0.0.1), one process each; both
    ranks end with the same parameters, and the checkpoint records the two-process world."""
    import socket

    data, _ = tc_data
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    run = tmp_path / "run"
    procs = []
    for rank in (0, 1):
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
               "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
               "--dynamo_backend", "no", TRAIN, "--config", SMOKE, "--output-dir", str(run),
               f"data.path={data}", "train.progress=false"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    replicas = _replicas(run)
    assert [r["rank"] for r in replicas] == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 4 for r in replicas)
    assert replicas[0]["param_sha256"] == replicas[1]["param_sha256"]
    ckpt = load_checkpoint(str(run / "checkpoints" / "step_00000004.pt"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2


def test_a_second_look_trains_and_registers(tc_data, tmp_path):
    """model.passes=2: train.py trains the cascade, nephi-infer predicts with it (summary says
    2 passes) and IO on both passes' codes and fields moves the labels towards the fixed ones,
    as nephi-warp applies the exported (composed) field: Dice rises."""
    import numpy as np

    from nephi.cli.infer import main as infer_main
    from nephi.cli.warp import main as warp_main
    from nephi.results.metrics import mean_dice

    data, nifti = tc_data
    run = tmp_path / "two_pass"
    _run([sys.executable, TRAIN, "--config", SMOKE, "--output-dir", str(run), f"data.path={data}",
          "train.progress=false", "model.passes=2", "train.steps=2"], tmp_path)
    ckpt = str(run / "checkpoints" / "best.pt")
    assert load_checkpoint(ckpt)["model_config"]["passes"] == 2
    pair = nifti / "pair_0000"
    out = tmp_path / "ff_io"
    assert infer_main(["--checkpoint", ckpt, "--pair", str(pair / "moving.nii.gz"),
                       str(pair / "fixed.nii.gz"), "--out", str(out), "--io-steps", "30",
                       "--io-params", "all", "--lr", "2e-3", "--no-progress",
                       "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["passes"] == 2 and summary["io_steps"] == 30
    assert warp_main(["--result", str(out), "--image", str(pair / "moving_label.nii.gz"),
                      "--interp", "label", "--out", str(tmp_path / "label.nii.gz")]) == 0
    read = [np.asarray(nib.load(str(p)).dataobj).squeeze() for p in
            (pair / "fixed_label.nii.gz", pair / "moving_label.nii.gz", tmp_path / "label.nii.gz")]
    before, after = mean_dice(read[0], read[1]), mean_dice(read[0], read[2])
    assert after > before + 0.05, (before, after)


def test_a_checkpoint_runs_the_alignment_its_pairs_had(ddp_run):
    """The alignment mode of the training pairs (nephi-prep --align, in the checkpoint's
    preprocessing) is nephi-infer's default with that checkpoint; pairs as they come: none."""
    import dataclasses

    from nephi.pipeline.feedforward import base_config, load_model

    model = load_model(str(ddp_run[0] / "checkpoints" / "best.pt"))
    assert model.prep.align == "none" and base_config(model)["align"]["mode"] == "none"
    aligned = dataclasses.replace(model, prep=dataclasses.replace(model.prep, align="affine"))
    assert base_config(aligned)["align"]["mode"] == "affine"


def test_a_network_of_masked_intensities_asks_for_masks(ddp_run, tc_data, tmp_path):
    """Percentile normalization looks inside a pair's masks when it has them; a network trained
    on such pairs sees other intensities without masks, so feed-forward asks for them."""
    import dataclasses

    import numpy as np

    from nephi.errors import NephiInputError
    from nephi.pipeline.feedforward import base_config, load_model, predict
    from nephi.pipeline.inputs import LoadedPair

    model = load_model(str(ddp_run[0] / "checkpoints" / "best.pt"))
    assert not model.masks  # Triangles and Circles pairs come without masks
    _, nifti = tc_data
    moving, fixed = (str(nifti / "pair_0000" / f"{k}.nii.gz") for k in ("moving", "fixed"))
    masked = dataclasses.replace(model, masks=True,
                                 prep=dataclasses.replace(model.prep, intensity={
                                     "method": "percentile", "low": 1.0, "high": 99.0,
                                     "window": [-1000.0, 0.0]}))
    cfg = base_config(masked)
    with pytest.raises(NephiInputError, match="percentiles within each image's mask"):
        predict(masked, LoadedPair(moving, fixed), cfg, progress=False)
    whole = np.ones(nib.load(fixed).shape[:2], dtype=bool)
    result = predict(masked, LoadedPair(moving, fixed, mask=whole, moving_mask=whole),
                     cfg, moving_mask=whole, progress=False)
    assert result.summary["mode"] == "feedforward"
