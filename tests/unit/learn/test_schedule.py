"""Training schedule and batches: learning-rate warm-up/decay and per-rank step batches
(moved from tests/test_training.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nephi.config.loader import resolve_config
from nephi.learn.trainer import StepBatches, lr_factor

REPO = Path(__file__).resolve().parents[3]
SMOKE = str(REPO / "configs" / "smoke.yaml")


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
