"""The training loss takes its similarity from the config (loss.similarity, loss.lncc_window):
global NCC by default (the paper's eq. 10), local NCC when asked, checked at the door."""

import numpy as np
import pytest
import torch

from nephi.config.loader import resolve_config
from nephi.config.validate import validate_training
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.learn.trainer import TrainStep, build_net


def step_values(overrides: list) -> dict:
    cfg = resolve_config("train", None, ["model.hidden=16", "model.fourier_features=4",
                                         "model.encoder_channels=[4,8]", "model.local_target=4",
                                         *overrides])
    validate_training(cfg)
    shape = (16, 16)
    step = TrainStep(build_net(cfg, shape), Grid(shape, np.eye(3)), cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 16)
    fixed = torch.exp(-(x[:, None] ** 2 + x[None] ** 2) * 4).reshape(1, 1, *shape)
    moving = torch.roll(fixed, 1, dims=2)
    loss, values = step(moving, fixed, None, 64, 16, gen)
    assert torch.isfinite(loss)
    return values


def test_training_uses_global_ncc_unless_told_otherwise():
    assert "sim_ab/lncc" not in step_values([])
    values = step_values(["loss.similarity.lncc=1.0", "loss.lncc_window=3"])
    assert {"sim_ab/ncc", "sim_ab/lncc", "sim_ba/lncc"} <= set(values)
    assert values["sim_ab/lncc"] != values["sim_ab/ncc"]


@pytest.mark.parametrize("override, key", [("loss.lncc_window=4", "loss.lncc_window"),
                                           ("loss.similarity.ncc=0.0", "loss.similarity"),
                                           ("loss.similarity.ncc=-1.0", "loss.similarity.ncc")])
def test_bad_training_similarity_names_its_key(override, key):
    with pytest.raises(NephiInputError, match=key.replace(".", r"\.")):
        step_values([override])
