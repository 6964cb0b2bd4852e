"""The registration network's encoder: branch level, local latent grid and output shapes
(moved from tests/test_training.py)."""

from __future__ import annotations

import pytest
import torch

from nephi.models.encoder import (EncoderConfig, Encoder, RegistrationNet, branch_level,
                                  demons_force)
from nephi.models.fields import FieldConfig


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


@pytest.mark.parametrize("flow_features", [False, True])
@pytest.mark.parametrize("shape", [(64, 48), (24, 20, 28), (40, 48, 36)])
def test_encoder_output_shapes(shape, flow_features):
    cfg = EncoderConfig(input_shape=list(shape), channels=[4, 4, 8, 8, 8, 8], latent_channels=6,
                        groups=2, flow_features=flow_features)
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


@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 40)])
def test_top_down_path_brings_far_context_into_z_l(shape):
    """Without the top-down path z_l sees only a few voxels around its cell (the levels down to
    the branch), so changing the input in one corner leaves z_l in the opposite corner as it
    was; with it the deep levels reach z_l there. (No GroupNorm: its statistics would couple
    the whole map either way.)"""
    x = torch.rand(1, 1, *shape)
    y = x.clone()
    y[(0, 0, *[slice(0, 8)] * len(shape))] += 10.0
    far = (0, slice(None), *[-1] * len(shape))
    for top_down in (False, True):
        torch.manual_seed(0)
        cfg = EncoderConfig(input_shape=list(shape), channels=[4, 4, 8, 8, 8], latent_channels=3,
                            groups=0, top_down=top_down)
        enc = Encoder(cfg).eval()
        with torch.no_grad():
            a, b = enc(x, x), enc(y, x)
        assert a.local.shape == (1, 3, *cfg.local_grid)
        change = (a.local[far] - b.local[far]).abs().max().item()
        assert (change > 0.0) if top_down else (change == 0.0)  # no path: exactly unchanged


def test_top_down_checkpoints_round_trip_and_old_configs_load(tmp_path):
    """The option is stored with the network; a model config written before it existed (no
    ``top_down`` key) builds the encoder without the path."""
    cfg = EncoderConfig(input_shape=[24, 24, 24], channels=[4, 4, 8, 8], latent_channels=4,
                        groups=2, top_down=True, flow_features=True)
    net = RegistrationNet(cfg, FieldConfig(ndim=3, latent_channels=4, hidden=8,
                                           fourier_features=4, latent_grid=cfg.local_grid[0]))
    net.save(str(tmp_path / "net.pt"))
    loaded, _ = RegistrationNet.load(str(tmp_path / "net.pt"))
    x = torch.rand(2, 1, 24, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x, x).local, net.eval().encode(x, x).local)
    old = net.model_config()
    del old["encoder"]["top_down"], old["encoder"]["flow_features"]
    older = RegistrationNet.from_model_config(old).encoder.cfg
    assert not older.top_down and not older.flow_features


@pytest.mark.parametrize("shift", [0.2, -0.35])
def test_demons_force_reads_a_sub_voxel_shift(shift):
    """Moving = fixed shifted by a fraction of a voxel along axis 0: where the image has slope,
    the force's axis-0 component is shift / (1 + shift^2) (moving - fixed ~ shift * slope) and
    the others vanish; everywhere each component lies within half a voxel."""
    x = torch.arange(40.0)
    fixed = torch.sin(2 * torch.pi * x / 40)[:, None, None].expand(40, 12, 10)
    moving = torch.sin(2 * torch.pi * (x + shift) / 40)[:, None, None].expand(40, 12, 10)
    force = demons_force(moving[None, None], fixed[None, None])[0]
    assert force.shape == (3, 40, 12, 10)
    sloped = torch.cos(2 * torch.pi * (x + shift / 2) / 40).abs() > 0.7
    sloped[[0, -1]] = False  # one-sided differences at the border
    expected = shift / (1 + shift ** 2)
    assert torch.allclose(force[0][sloped], torch.tensor(expected), atol=0.02)
    assert force[1:].abs().max() < 1e-6
    noise = demons_force(torch.rand(2, 1, 9, 8, 7), torch.rand(2, 1, 9, 8, 7))
    assert noise.abs().max() <= 0.5 + 1e-6
