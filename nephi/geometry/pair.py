"""An image pair on a device, sampled in the fixed image's frame.

The frame is the fixed grid's normalized coordinates (see :mod:`nephi.geometry.grid`). The moving
image is sampled by mapping frame points through physical space to its own normalized
coordinates, so the two images may differ in shape, spacing and orientation.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.sampling import gaussian_smooth, sample_image


class PairTensors:
    """Fixed (B, 1, *S_f) and moving (B, 1, *S_m) intensity tensors with their grids.

    A = moving, B = fixed. All images of a batch share the fixed grid and the moving grid.
    ``fixed_mask`` (B, *S_f) bool, optional: similarity points are drawn inside it.
    ``moving_mask`` (B, *S_m) bool, optional: backward similarity points are drawn inside it,
    and the similarity terms count only points that both masks hold (:meth:`moving_mask_at`).
    ``pre_affine`` ((d+1, d+1), RAS mm, fixed -> moving), optional: a global alignment applied
    after the maps, so a map phi is optimized for I_A(pre_affine(phi(x))) (an identity phi
    then means the aligned start).
    """

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_grid: Grid,
                 moving_grid: Grid, fixed_mask: torch.Tensor | None = None,
                 pre_affine: np.ndarray | None = None,
                 moving_mask: torch.Tensor | None = None):
        self.fixed = fixed
        self.moving = moving
        self.fixed_grid = fixed_grid
        self.moving_grid = moving_grid
        self.frame_to_moving = fixed_grid.frame_to(moving_grid)
        if pre_affine is not None:
            self.frame_to_moving = (moving_grid.ras_to_normalized @ pre_affine
                                    @ fixed_grid.normalized_to_ras)
        self.moving_to_frame = np.linalg.inv(self.frame_to_moving)
        self.fixed_mask = fixed_mask
        self.moving_mask = moving_mask
        self._mask_index = self._moving_index = None
        if fixed_mask is not None:
            self._mask_index = [torch.nonzero(m.reshape(-1)).squeeze(1) for m in fixed_mask]
        if moving_mask is not None:
            self._moving_index = [torch.nonzero(m.reshape(-1)).squeeze(1) for m in moving_mask]

    def smoothed(self, sigma: float) -> "PairTensors":
        """The same pair with both images smoothed by a Gaussian of ``sigma`` fixed-image voxels
        (the moving image by the same width in mm); masks and geometry unchanged."""
        if sigma <= 0:
            return self
        ratio = float(np.mean(self.fixed_grid.spacing) / np.mean(self.moving_grid.spacing))
        out = copy.copy(self)
        out.fixed = torch.cat([gaussian_smooth(f[None], sigma) for f in self.fixed])
        out.moving = torch.cat([gaussian_smooth(m[None], sigma * ratio) for m in self.moving])
        return out

    @property
    def batch(self) -> int:
        return self.fixed.shape[0]

    @property
    def ndim(self) -> int:
        return self.fixed_grid.ndim

    @property
    def device(self) -> torch.device:
        return self.fixed.device

    def fixed_at(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed intensities at frame points (B, N, d) -> (B, N)."""
        return sample_image(self.fixed, x)[:, 0]

    def moving_at(self, x: torch.Tensor) -> torch.Tensor:
        """Moving intensities at frame points (B, N, d) -> (B, N), sampled via physical space."""
        return sample_image(self.moving, apply_affine_torch(self.frame_to_moving, x))[:, 0]

    @staticmethod
    def _mask_at(mask: torch.Tensor | None, points: torch.Tensor) -> torch.Tensor | None:
        """Whether points (B, N, d) in ``mask``'s normalized coordinates lie in it (nearest
        voxel) -> (B, N) bool; None without a mask."""
        if mask is None:
            return None
        return sample_image(mask.unsqueeze(1).to(points.dtype), points, mode="nearest",
                            padding="zeros")[:, 0] > 0.5

    def fixed_mask_at(self, x: torch.Tensor) -> torch.Tensor | None:
        """Whether frame points (B, N, d) lie in the fixed mask -> (B, N) bool, or None."""
        return self._mask_at(self.fixed_mask, x)

    def moving_mask_at(self, x: torch.Tensor) -> torch.Tensor | None:
        """Whether frame points (B, N, d), seen through the moving grid, lie in the moving mask
        -> (B, N) bool, or None without a moving mask."""
        return self._mask_at(self.moving_mask, apply_affine_torch(self.frame_to_moving, x))

    @staticmethod
    def _in_mask(index: list, grid: Grid, n: int, generator) -> torch.Tensor:
        """n points per batch item at mask voxels (each jittered within its voxel), in the
        normalized coordinates of ``grid``: (B, n, d) on the CPU."""
        shape = torch.tensor(grid.shape)
        d = grid.ndim
        pts = []
        for idx in index:
            pick = idx[torch.randint(len(idx), (n,), generator=generator, device="cpu").to(idx.device)]
            vox = torch.stack(torch.unravel_index(pick.cpu(), tuple(grid.shape)), dim=-1)
            jitter = torch.rand(n, d, generator=generator, device="cpu") - 0.5
            ijk = (vox.float() + jitter).clamp(min=0.0)
            ijk = torch.minimum(ijk, (shape - 1).float())
            pts.append(-1.0 + 2.0 * ijk / (shape - 1).float())
        return torch.stack(pts)

    def sample_fixed_points(self, n: int, generator: torch.Generator | None = None,
                            in_mask: bool = True) -> torch.Tensor:
        """n points per batch item, uniform over the fixed domain (or its mask), frame coords."""
        if self._mask_index is None or not in_mask:
            u = torch.rand(self.batch, n, self.ndim, generator=generator, device="cpu")
            return (2.0 * u - 1.0).to(self.device)
        return self._in_mask(self._mask_index, self.fixed_grid, n, generator).to(self.device)

    def sample_moving_points(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points per batch item, uniform over the moving domain (or its mask), in frame
        coords."""
        if self._moving_index is None:
            u = 2.0 * torch.rand(self.batch, n, self.ndim, generator=generator, device="cpu") - 1.0
        else:
            u = self._in_mask(self._moving_index, self.moving_grid, n, generator)
        return apply_affine_torch(self.moving_to_frame, u.to(self.device))
