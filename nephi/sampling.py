"""Sampling images and grids of values at points given in normalized coordinates.

Two ways, for two needs:

* :func:`sample_image` wraps ``grid_sample`` (fast; first derivatives only). Used for images,
  whose sampling is differentiated once (similarity losses).
* :func:`interpolate_linear` is multilinear interpolation made of plain tensor ops, so it can be
  differentiated twice with respect to the points. Used for the latent grid z_l(x), which sits
  inside the networks whose spatial Jacobian GradICON differentiates again.

Points are (B, N, d) in the normalized coordinates (array-axis order, align_corners=True) of the
sampled grid.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .geometry import to_grid_sample_order


def sample_image(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear",
                 padding: str = "border") -> torch.Tensor:
    """Sample ``volume`` (B, C, *S) at ``points`` (B, N, d) -> (B, C, N)."""
    b, n, d = points.shape
    grid = to_grid_sample_order(points).reshape(b, n, *([1] * (d - 1)), d)
    out = F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=True)
    return out.reshape(b, volume.shape[1], n)


def interpolate_linear(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Multilinear interpolation of ``values`` (B, C, *G) at ``points`` (B, N, d) -> (B, N, C).

    Points outside [-1, 1] take the value at the nearest border (coordinates are clamped).
    Twice differentiable in ``points`` and ``values`` (piecewise linear in ``points``).
    """
    b, c = values.shape[:2]
    sizes = values.shape[2:]
    d = len(sizes)
    n = points.shape[1]
    size_t = torch.tensor(sizes, dtype=points.dtype, device=points.device)
    idx = (points + 1.0) * 0.5 * (size_t - 1.0)
    idx = torch.minimum(torch.clamp(idx, min=0.0), size_t - 1.0)
    base = torch.minimum(idx.detach().floor(), size_t - 2.0).clamp(min=0.0)
    frac = idx - base
    base = base.long()
    strides = [1] * d
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * sizes[k + 1]
    flat = values.reshape(b, c, -1)
    out = points.new_zeros(b, c, n)
    for corner in itertools.product((0, 1), repeat=d):
        lin = torch.zeros(b, n, dtype=torch.long, device=points.device)
        weight = torch.ones(b, n, dtype=points.dtype, device=points.device)
        for k, bit in enumerate(corner):
            lin = lin + (base[..., k] + bit) * strides[k]
            weight = weight * (frac[..., k] if bit else 1.0 - frac[..., k])
        gathered = torch.gather(flat, 2, lin.unsqueeze(1).expand(b, c, n))
        out = out + gathered * weight.unsqueeze(1)
    return out.transpose(1, 2)
