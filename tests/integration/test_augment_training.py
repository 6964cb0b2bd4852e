"""Training with on-the-fly augmentation end to end (configs/smoke.yaml, every kind on) on a
few MNI152 head pairs with landmarks: the run finishes, TensorBoard holds the landmark error of
the augmented training pairs, and validation sees the pairs as stored (unaugmented)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from nephi.config.loader import resolve_config
from nephi.data.pairfile import PairFileWriter
from nephi.data.preprocess import PrepConfig, PreparedPair
from nephi.learn.trainer import train
from nephi.models.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                 reason="nilearn (MNI152 template) is not installed")]

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
AUGMENT = ["augment.affine.probability=1", "augment.deform.probability=1",
           "augment.intensity.probability=0.5", "augment.flip.probability=0.5",
           "augment.flip.axes=[0]"]


@pytest.fixture(scope="module")
def head_pairs(tmp_path_factory):
    """Three MNI152 T1 pairs at 8 mm (known smooth deformations, landmarks), one for
    validation: (path, mean initial landmark error of the validation pair in mm)."""
    from nephi.data.real_scans import make_pair, mni152

    scan = mni152(spacing=8.0)
    scale = float(np.percentile(scan.image, 99))
    path = tmp_path_factory.mktemp("heads") / "heads.h5"
    prep = PrepConfig(spacing=[8.0], shape=list(scan.grid.shape))
    with PairFileWriter(str(path), prep, builder="test") as writer:
        for k, split in enumerate(("train", "train", "val")):
            pair = make_pair(scan, max_mm=10.0, seed=k, n_landmarks=20)
            writer.add(f"head_{k}", PreparedPair(
                grid=scan.grid, moving=pair.moving / scale, fixed=pair.fixed / scale,
                fixed_points=pair.fixed_points, moving_points=pair.moving_points), split)
    initial = np.linalg.norm(pair.fixed_points - pair.moving_points, axis=1).mean()
    return path, float(initial)


def _scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_smoke_training_with_augmentation(head_pairs, tmp_path):
    data, initial = head_pairs
    cfg = resolve_config("train", SMOKE, [f"data.path={data}", "train.steps=3",
                                          "train.progress=false", "val.every=3",
                                          "checkpoint.every=3", *AUGMENT])
    metrics = train(cfg, str(tmp_path / "run"), command=["test"])
    replica = json.loads((tmp_path / "run" / "replica_rank0.json").read_text(encoding="utf-8"))
    assert replica["step"] == 3
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    errors = scalars["train/landmark_error_mm"]
    assert len(errors) == 3 and all(0.0 < e < 60.0 for e in errors)
    assert "train/landmark_count" not in scalars and "train/landmark_sum_mm" not in scalars
    assert metrics["val/landmark_error_before_mm"] == pytest.approx(initial, rel=1e-6)
    ckpt = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "step_00000003.pt"))
    assert ckpt["config"]["augment"]["deform"]["probability"] == 1.0
