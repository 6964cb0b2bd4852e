"""The second look (nephi/models/cascade.py): a K-pass network composes its passes' maps in the
documented order, its later encoders read the moving image through the earlier passes, and it
saves and loads itself."""

from __future__ import annotations

import pytest
import torch

from nephi.geometry.sampling import sample_image
from nephi.models.cascade import CascadeFields, warp_moving
from nephi.models.encoder import EncoderConfig, RegistrationNet
from nephi.models.fields import FieldConfig, Latent
from nephi.transforms.base import grid_points

SHAPE = (24, 20, 16)


def _net(passes: int, seed: int = 0) -> RegistrationNet:
    enc = EncoderConfig(input_shape=list(SHAPE), channels=[4, 8, 8], latent_channels=6, groups=2)
    fields = FieldConfig(ndim=3, latent_channels=6, latent_grid=enc.local_grid[0], hidden=16,
                         fourier_features=4)
    net = RegistrationNet(enc, fields, seed=seed, passes=passes)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():  # output layers start at zero (identity maps): give them a shape
        for name, p in net.named_parameters():
            if name.endswith("out.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _pair(seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, *SHAPE, generator=gen), torch.rand(2, 1, *SHAPE, generator=gen)


def test_whole_maps_compose_the_passes_in_order():
    net = _net(3)
    moving, fixed = _pair()
    with torch.no_grad():
        latent = net.encode(moving, fixed)
        assert latent.global_.shape == (2, 18) and latent.local.shape[1] == 18
        parts = net.fields.split(latent)
        x = torch.rand(2, 50, 3) * 2 - 1
        ab = [f.map_ab(z) for f, z in zip(net.fields.passes, parts)]
        ba = [f.map_ba(z) for f, z in zip(net.fields.passes, parts)]
        # pass 3 acts first on a fixed point; pass 1 first on a moving point
        torch.testing.assert_close(net.fields.phi_ab(x, latent), ab[0](ab[1](ab[2](x))))
        torch.testing.assert_close(net.fields.phi_ba(x, latent), ba[2](ba[1](ba[0](x))))
        moved = (net.fields.phi_ab(x, latent) - x).norm(dim=-1)
        assert float(moved.mean()) > 1e-3  # the passes are not identities
        # the analytic Jacobian of the whole map is the chain rule's, pass 3's factor first
        _, jac = net.fields.map_ab(latent).value_and_jacobian(x)
        y3, j3 = ab[2].value_and_jacobian(x)
        y2, j2 = ab[1].value_and_jacobian(y3)
        _, j1 = ab[0].value_and_jacobian(y2)
        torch.testing.assert_close(jac, j1 @ j2 @ j3)


def test_later_passes_read_the_moving_image_through_the_earlier_ones():
    net = _net(2)
    moving, fixed = _pair(1)
    seen = []
    net.refiners[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    with torch.no_grad():
        latent = net.encode(moving, fixed)
        first = Latent(latent.global_[:, :6], latent.local[:, :6])
        expected = warp_moving(moving, net.fields.passes[0].map_ab(first))
    torch.testing.assert_close(seen[0], expected)
    assert float((seen[0] - moving).abs().mean()) > 1e-3


def test_warp_moving_follows_an_affine_map_exactly():
    """phi(x) = A x + t is interpolated exactly from the half-resolution grid: the result is
    the image sampled at phi on every voxel (a smooth image, known values)."""
    axes = [torch.linspace(-1, 1, n) for n in SHAPE]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    image = (torch.sin(2.0 * grid[..., 0]) * torch.cos(1.5 * grid[..., 1])
             + 0.5 * grid[..., 2]).reshape(1, 1, *SHAPE)
    lin = torch.tensor([[0.95, 0.05, 0.0], [-0.05, 0.95, 0.0], [0.0, 0.0, 1.0]])
    shift = torch.tensor([0.04, -0.06, 0.03])

    def phi(x):
        return x @ lin.T + shift

    out = warp_moving(image, phi)
    y = phi(grid_points(SHAPE)).reshape(*SHAPE, 3)
    truth = torch.sin(2.0 * y[..., 0]) * torch.cos(1.5 * y[..., 1]) + 0.5 * y[..., 2]
    inside = (y.abs() <= 1).all(dim=-1)
    err = (out[0, 0] - truth)[inside].abs()
    # multilinear interpolation of the image itself: error of order h^2 |f''| / 8
    h = 2.0 / (min(SHAPE) - 1)
    assert float(err.max()) < 4.0 * h * h / 8.0 * 4.0
    # and the map itself is exact: the same as sampling at phi of every voxel
    exact = sample_image(image, phi(grid_points(SHAPE)).unsqueeze(0)).reshape(image.shape)
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=1e-5)


def test_a_cascade_saves_and_loads_itself(tmp_path):
    net = _net(2, seed=3).eval()
    path = str(tmp_path / "two_pass.pt")
    net.save(path, step=1)
    loaded, ckpt = RegistrationNet.load(path)
    assert ckpt["model_config"]["passes"] == 2 and loaded.passes == 2
    assert isinstance(loaded.fields, CascadeFields) and len(loaded.refiners) == 1
    moving, fixed = _pair(2)
    x = torch.rand(2, 30, 3) * 2 - 1
    with torch.no_grad():
        a, b = net.encode(moving, fixed), loaded.encode(moving, fixed)
        torch.testing.assert_close(net.fields.phi_ab(x, a), loaded.fields.phi_ab(x, b))


def test_one_pass_networks_keep_their_layout():
    """A one-pass network has no refiner and the paper's plain fields (old checkpoints, whose
    model config has no ``passes``, load as one pass)."""
    net = _net(1)
    assert not any(k.startswith("refiners") for k in net.state_dict())
    cfg = net.model_config()
    del cfg["passes"]
    assert RegistrationNet.from_model_config(cfg).passes == 1
    with pytest.raises(ValueError, match="latent channels"):
        CascadeFields(net.fields.cfg, 2).split(Latent(torch.zeros(1, 5), torch.zeros(1, 5, 2, 2, 2)))
