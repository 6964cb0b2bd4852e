"""A map split into an affine and the displacement before it (the ANTs-style outputs:
affine.mat + deformable_warp) gives the whole map back at every voxel."""

import numpy as np
import pytest

from nephi.geometry.grid import Grid
from nephi.transforms.affine import Affine
from nephi.transforms.displacement import Field


@pytest.mark.parametrize("shape", [(9, 7, 5), (12, 10)])
def test_the_field_before_an_affine_recomposes_the_whole_map(shape):
    rng = np.random.default_rng(3)
    d = len(shape)
    voxel_to_ras = np.eye(d + 1)
    voxel_to_ras[:d, :d] = rng.normal(size=(d, d)) + 2 * np.eye(d)  # oblique, anisotropic
    voxel_to_ras[:d, d] = rng.normal(size=d) * 40
    grid = Grid(shape, voxel_to_ras)
    matrix = np.eye(d + 1)
    matrix[:d, :d] += rng.normal(size=(d, d)) * 0.1
    matrix[:d, d] = rng.normal(size=d) * 10
    affine = Affine(matrix)
    whole = Field(rng.normal(size=(*shape, d)) * 3, grid)

    part = affine.field_before(whole)

    x = grid.index_to_ras_points(np.indices(shape).reshape(d, -1).T)
    deformable = x + part.disp.reshape(-1, d)
    assert part.grid == grid
    np.testing.assert_allclose(affine(deformable), x + whole.disp.reshape(-1, d), atol=1e-9)
