"""Dense evaluation of NePhi maps on voxel grids, in chunks (memory bounded by the chunk size).

Produces what ``nephi-infer`` writes: displacement fields in RAS mm on the fixed grid (forward)
and on the moving grid (backward), the warped moving image, the Jacobian determinant of phi_AB
and the inverse-consistency error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.sampling import interpolate_linear, sample_image
from nephi.transforms.base import PointMap, evaluate_chunked, grid_points, on_grid
from nephi.transforms.jacobian import jacobian_determinant_dense


@dataclass
class DenseFields:
    """Dense outputs of a registration (numpy, float32 unless noted).

    forward_disp_ras: (*S_fixed, d) phi_AB(x) - x in RAS mm on the fixed grid.
    backward_disp_ras: (*S_moving, d) phi_BA(y) - y in RAS mm on the moving grid.
    warped: (*S_fixed) moving intensities at phi_AB(x) (linear, 0 outside the moving image by
        ITK's rule: :func:`nephi.geometry.sampling.sample_image` with ``padding="itk"``).
    jacobian: (*S_fixed) det of the Jacobian of phi_AB.
    inverse_error_mm: (*S_fixed) |phi_BA(phi_AB(x)) - x| in mm, phi_BA read from
        ``backward_disp_ras`` by trilinear interpolation (as the exported fields compose).
    """

    forward_disp_ras: np.ndarray
    backward_disp_ras: np.ndarray
    warped: np.ndarray
    jacobian: np.ndarray
    inverse_error_mm: np.ndarray


def frame_points_of(grid: Grid, frame_grid: Grid, device) -> torch.Tensor:
    """Frame coordinates (of ``frame_grid``) of every voxel of ``grid``, shape (M, d)."""
    pts = grid.normalized_points(device=device).reshape(-1, grid.ndim)
    return apply_affine_torch(grid.frame_to(frame_grid), pts)


def dense_fields(phi_ab: PointMap, phi_ba: PointMap, moving_data: np.ndarray, fixed_grid: Grid,
                 moving_grid: Grid, device, chunk: int = 32768) -> DenseFields:
    """Evaluate both maps (frame -> frame, on (1, n, d) points) densely; see :class:`DenseFields`."""
    d = fixed_grid.ndim
    frame_to_ras = fixed_grid.normalized_to_ras
    x = grid_points(fixed_grid.shape, device)
    ab = on_grid(phi_ab, fixed_grid.shape, chunk, device)
    forward_disp = apply_affine_torch(frame_to_ras, ab) - apply_affine_torch(frame_to_ras, x)

    moving = torch.as_tensor(moving_data, dtype=torch.float32, device=device)
    moving = moving.reshape(1, 1, *moving_grid.shape)
    frame_to_moving = fixed_grid.frame_to(moving_grid)
    warped = torch.empty(x.shape[0], device=device)
    for start in range(0, x.shape[0], chunk):
        pts = apply_affine_torch(frame_to_moving, ab[start:start + chunk]).unsqueeze(0)
        warped[start:start + chunk] = sample_image(moving, pts, padding="itk")[0, 0]

    index = apply_affine_torch(fixed_grid.normalized_to_index, ab)
    index = index.reshape(*fixed_grid.shape, d).movedim(-1, 0)
    det = jacobian_determinant_dense(index)

    y = frame_points_of(moving_grid, fixed_grid, device)
    ba = evaluate_chunked(phi_ba, y, chunk)
    backward_disp = apply_affine_torch(frame_to_ras, ba) - apply_affine_torch(frame_to_ras, y)

    # Inverse consistency from the two passes made: phi_BA at phi_AB(x) is read from the
    # backward field on the moving grid (trilinear, border values outside), as a downstream tool
    # composing warp and inverse_warp would; no third network pass.
    table = backward_disp.reshape(*moving_grid.shape, d).movedim(-1, 0).unsqueeze(0)
    ic_mm = torch.empty(x.shape[0], device=device)
    for start in range(0, x.shape[0], chunk):
        a = ab[start:start + chunk]
        at = apply_affine_torch(frame_to_moving, a).unsqueeze(0)
        back = sample_image(table, at, padding="border")[0].T
        ic_mm[start:start + chunk] = (apply_affine_torch(frame_to_ras, a) + back
                                      - apply_affine_torch(frame_to_ras, x[start:start + chunk])
                                      ).norm(dim=-1)

    def arr(t, shape):
        return t.reshape(*shape).cpu().numpy().astype(np.float32)

    return DenseFields(
        forward_disp_ras=arr(forward_disp, (*fixed_grid.shape, d)),
        backward_disp_ras=arr(backward_disp, (*moving_grid.shape, d)),
        warped=arr(warped, fixed_grid.shape),
        jacobian=arr(det, fixed_grid.shape),
        inverse_error_mm=arr(ic_mm, fixed_grid.shape),
    )


def tabulate(fn: PointMap, shape, device, twice_differentiable: bool = True) -> PointMap:
    """fn (1, n, d) -> (1, n, d) tabulated on a grid of ``shape`` over [-1, 1]^d (voxel centres,
    align_corners) and linearly interpolated between: x -> x + D(x), with D the table of
    fn(p) - p, constant beyond the border. Exact at the grid points; its second derivatives
    vanish between them. ``twice_differentiable``: interpolate with
    :func:`nephi.geometry.sampling.interpolate_linear` (a table inside a loss that is
    differentiated twice, such as GradICON's); otherwise with ``grid_sample`` (the same values,
    faster; for export)."""
    disp = on_grid(fn, shape, 32768, device) - grid_points(shape, device)
    table = disp.reshape(*shape, len(shape)).movedim(-1, 0).unsqueeze(0)
    if twice_differentiable:
        return lambda x: x + interpolate_linear(table.expand(x.shape[0], *table.shape[1:]), x)
    return lambda x: x + sample_image(table.expand(x.shape[0], *table.shape[1:]), x).transpose(1, 2)
