"""The training config's encoder keys (model.top_down, model.flow_features) reach the network
that build_net makes, and a training step runs with them; a value of the wrong type names its
key."""

import numpy as np
import pytest
import torch

from nephi.config.loader import resolve_config
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.learn.trainer import TrainStep, build_net

SMALL = ["model.hidden=16", "model.fourier_features=4", "model.encoder_channels=[4,8,8]",
         "model.local_target=8"]


@pytest.mark.parametrize("top_down, flow", [(False, False), (True, True)])
def test_encoder_options_reach_the_network(top_down, flow):
    cfg = resolve_config("train", None, [*SMALL, f"model.top_down={str(top_down).lower()}",
                                         f"model.flow_features={str(flow).lower()}"])
    shape = (16, 16, 16)
    net = build_net(cfg, shape)
    assert (net.encoder.cfg.top_down, net.encoder.cfg.flow_features) == (top_down, flow)
    assert net.encoder.stem[0].in_channels == (5 if flow else 2)
    step = TrainStep(net, Grid(shape, np.eye(4)), cfg)
    x = torch.linspace(-1, 1, 16)
    fixed = torch.exp(-(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None] ** 2) * 4)
    fixed = fixed.reshape(1, 1, *shape)
    loss, _ = step(torch.roll(fixed, 1, dims=2), fixed, None, 64, 16,
                   torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.encoder.parameters()
               if p.grad is not None)


def test_encoder_option_of_wrong_type_names_its_key():
    with pytest.raises(NephiInputError, match="model.flow_features"):
        resolve_config("train", None, [*SMALL, "model.flow_features=3"])
