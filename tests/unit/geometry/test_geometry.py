"""Geometry conventions: index / normalized / RAS / LPS round trips, any orientation."""

import numpy as np
import pytest
import torch

from nephi.geometry.grid import Grid, lps_to_ras, ras_to_lps, to_grid_sample_order
from nephi.geometry.sampling import interpolate_linear, sample_image


def rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oriented_affines():
    """RAS-aligned, permuted + flipped (LPI-like), and oblique anisotropic affines."""
    out = []
    out.append(np.diag([2.0, 3.0, 4.0, 1.0]))
    perm = np.zeros((4, 4))
    perm[0, 1], perm[1, 2], perm[2, 0], perm[3, 3] = -1.5, 2.5, -0.8, 1.0
    perm[:3, 3] = [10.0, -20.0, 30.0]
    out.append(perm)
    obl = np.eye(4)
    obl[:3, :3] = rotation(0, 17) @ rotation(2, -23) @ np.diag([0.7, 1.1, 3.0])
    obl[:3, 3] = [-5.0, 7.0, 2.0]
    out.append(obl)
    return out


@pytest.mark.parametrize("affine", oriented_affines())
def test_round_trips(affine):
    grid = Grid((11, 13, 7), affine)
    rng = np.random.default_rng(0)
    index = rng.uniform(-2, 14, size=(50, 3))
    ras = grid.index_to_ras_points(index)
    np.testing.assert_allclose(grid.ras_to_index_points(ras), index, atol=1e-9)
    norm = grid.ras_to_normalized_points(ras)
    np.testing.assert_allclose(grid.normalized_to_ras_points(norm), ras, atol=1e-9)
    np.testing.assert_allclose(norm, -1 + 2 * index / (np.array(grid.shape) - 1), atol=1e-9)
    np.testing.assert_allclose(lps_to_ras(ras_to_lps(ras)), ras)
    lps = ras_to_lps(ras)
    np.testing.assert_allclose(lps[:, :2], -ras[:, :2])
    np.testing.assert_allclose(lps[:, 2], ras[:, 2])


def test_corner_voxels_are_plus_minus_one():
    grid = Grid((5, 9), np.diag([1.0, 2.0, 1.0]))
    pts = grid.normalized_points().reshape(-1, 2)
    assert torch.allclose(pts[0], torch.tensor([-1.0, -1.0]))
    assert torch.allclose(pts[-1], torch.tensor([1.0, 1.0]))
    np.testing.assert_allclose(grid.spacing, [1.0, 2.0])


@pytest.mark.parametrize("a_fixed,a_moving", [(0, 1), (1, 2), (2, 0)])
def test_frame_to_other_grid_is_physical(a_fixed, a_moving):
    affs = oriented_affines()
    fixed, moving = Grid((8, 9, 10), affs[a_fixed]), Grid((12, 6, 7), affs[a_moving])
    x = np.random.default_rng(1).uniform(-1, 1, size=(20, 3))
    via_matrix = moving.normalized_to_ras_points(
        (x @ fixed.frame_to(moving)[:3, :3].T) + fixed.frame_to(moving)[:3, 3])
    np.testing.assert_allclose(via_matrix, fixed.normalized_to_ras_points(x), atol=1e-9)


def test_grid_sample_axis_order():
    """sample_image at a normalized point returns the voxel at that array index."""
    vol = torch.zeros(1, 3, 4, 5, 6)
    i, j, k = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), torch.arange(6.0),
                             indexing="ij")
    vol[0, 0], vol[0, 1], vol[0, 2] = i, j, k
    index = torch.tensor([[1.0, 3.0, 4.5], [2.25, 0.5, 1.0]])
    norm = -1 + 2 * index / torch.tensor([3.0, 4.0, 5.0])
    out = sample_image(vol, norm.unsqueeze(0))[0].T
    assert torch.allclose(out, index, atol=1e-5)
    assert torch.equal(to_grid_sample_order(torch.tensor([1.0, 2.0, 3.0])),
                       torch.tensor([3.0, 2.0, 1.0]))


@pytest.mark.parametrize("d", [2, 3])
def test_interpolate_linear_matches_grid_sample_and_is_twice_differentiable(d):
    torch.manual_seed(0)
    values = torch.randn(2, 4, *([6] * d), dtype=torch.float64)
    pts = (torch.rand(2, 30, d, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    ours = interpolate_linear(values, pts)
    ref = sample_image(values, pts).transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-10)
    grad = torch.autograd.grad((ours ** 2).sum(), pts, create_graph=True)[0]
    second = torch.autograd.grad(grad.sum(), pts)[0]
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_grid_rejects_bad_geometry():
    with pytest.raises(ValueError):
        Grid((1, 5, 5), np.eye(4))
    with pytest.raises(ValueError):
        Grid((5, 5, 5), np.zeros((4, 4)))
