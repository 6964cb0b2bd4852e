"""The registration network's encoder: branch level, local latent grid and output shapes
(moved from tests/test_training.py)."""

from __future__ import annotations

import pytest
import torch

from nephi.models.encoder import EncoderConfig, Encoder, RegistrationNet, branch_level
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

