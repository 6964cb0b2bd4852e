"""Maps evaluated on regular grids (the dense export's fast path) give the values of calling
them on the grid's points: separable latent interpolation, FieldMap.on_grid, compositions."""

import pytest
import torch

from nephi.geometry.sampling import GridInterpolation, interpolate_linear
from nephi.models.fields import FieldConfig, Latent, NephiFields
from nephi.transforms.base import Composition, evaluate_chunked, grid_points, on_grid


@pytest.mark.parametrize("shape, latent", [((7, 9, 5), (4, 5, 3)), ((33, 20), (16, 16)),
                                           ((2, 6, 11), (3, 3, 3))])
def test_grid_interpolation_matches_corner_gathers(shape, latent):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1, 6, *latent, generator=gen, dtype=torch.float64)
    points = grid_points(shape).to(torch.float64).unsqueeze(0)
    want = interpolate_linear(values, points)[0]
    table = GridInterpolation(values, shape)
    got = torch.cat([table.rows(s, min(s + 3, shape[0])) for s in range(0, shape[0], 3)])
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)  # points from float32 coordinates


def rough_fields(ndim: int) -> tuple:
    """NePhi fields with non-zero output layers (a visible, rough field) and a random code."""
    cfg = FieldConfig(ndim=ndim, latent_channels=4, latent_grid=5, hidden=32, layers=2,
                      fourier_features=8, fourier_scale=2.0, omega0=1.0)
    torch.manual_seed(0)
    fields = NephiFields(cfg)
    with torch.no_grad():
        for net in (fields.forward_net, fields.backward_net):
            net.out.weight.normal_(0.0, 0.05)
    return fields, Latent.random(1, cfg, 1.0)


@pytest.mark.parametrize("ndim, shape", [(3, (9, 12, 7)), (2, (17, 10))])
def test_field_map_on_grid_equals_pointwise_calls(ndim, shape):
    fields, latent = rough_fields(ndim)
    phi = fields.map_ab(latent)
    with torch.no_grad():
        want = evaluate_chunked(phi, grid_points(shape), 50)
        got = on_grid(phi, shape, 50)  # slabs smaller than one plane: one row at a time
        assert (want - grid_points(shape)).abs().max() > 0.01  # a visible field
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(on_grid(phi, shape, 10_000), want, atol=1e-5)


def test_composition_on_grid_and_plain_maps():
    fields, latent = rough_fields(3)
    shape = (6, 8, 5)
    shift = torch.tensor([0.1, -0.2, 0.05])
    comp = Composition(lambda x: 2.0 * x + shift, fields.map_ab(latent))
    points = grid_points(shape)
    with torch.no_grad():
        want = evaluate_chunked(comp, points, 64)
        assert torch.allclose(on_grid(comp, shape, 64), want, atol=1e-5)
        plain = Composition(fields.map_ab(latent), lambda x: x + shift)  # inner: a plain callable
        assert torch.allclose(on_grid(plain, shape, 64), evaluate_chunked(plain, points, 64),
                              atol=1e-5)


def test_tabulated_map_for_export_matches_the_twice_differentiable_table():
    from nephi.transforms.dense import tabulate

    fields, latent = rough_fields(3)
    phi = fields.map_ab(latent)
    x = torch.rand(1, 500, 3) * 2.4 - 1.2  # also beyond the border: constant displacement
    with torch.no_grad():
        smooth = tabulate(phi, (9, 8, 7), "cpu")(x)
        fast = tabulate(phi, (9, 8, 7), "cpu", twice_differentiable=False)(x)
    assert torch.allclose(fast, smooth, atol=1e-5)
