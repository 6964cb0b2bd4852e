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

from nephi.geometry.grid import to_grid_sample_order


def sample_image(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear",
                 padding: str = "border") -> torch.Tensor:
    """Sample ``volume`` (B, C, *S) at ``points`` (B, N, d) -> (B, C, N)."""
    b, n, d = points.shape
    grid = to_grid_sample_order(points).reshape(b, n, *([1] * (d - 1)), d)
    out = F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=True)
    return out.reshape(b, volume.shape[1], n)


def _cell(values: torch.Tensor, points: torch.Tensor):
    """Cell of every point: flattened values (B, C, M), base corner (B, N, d) long, fraction in
    the cell (B, N, d), d(fraction)/d(point) (B, N, d) (0 where the point is clamped), strides."""
    sizes = values.shape[2:]
    d = len(sizes)
    size_t = torch.tensor(sizes, dtype=points.dtype, device=points.device)
    scale = 0.5 * (size_t - 1.0)
    raw = (points + 1.0) * scale
    idx = torch.minimum(torch.clamp(raw, min=0.0), size_t - 1.0)
    base = torch.minimum(idx.detach().floor(), size_t - 2.0).clamp(min=0.0)
    frac = idx - base
    inside = ((raw >= 0.0) & (raw <= size_t - 1.0)).to(points.dtype)
    strides = [1] * d
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * sizes[k + 1]
    return values.reshape(*values.shape[:2], -1), base.long(), frac, scale * inside, strides


def _corners(flat: torch.Tensor, base: torch.Tensor, strides: list):
    """Yield (corner bits, corner values (B, C, N)) for the 2^d corners of every point's cell."""
    b, c = flat.shape[:2]
    n, d = base.shape[1], base.shape[2]
    for corner in itertools.product((0, 1), repeat=d):
        lin = sum((base[..., k] + bit) * strides[k] for k, bit in enumerate(corner))
        yield corner, torch.gather(flat, 2, lin.unsqueeze(1).expand(b, c, n))


def interpolate_linear(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Multilinear interpolation of ``values`` (B, C, *G) at ``points`` (B, N, d) -> (B, N, C).

    Points outside [-1, 1] take the value at the nearest border (coordinates are clamped).
    Twice differentiable in ``points`` and ``values`` (piecewise linear in ``points``).
    """
    flat, base, frac, _, strides = _cell(values, points)
    out = points.new_zeros(values.shape[0], values.shape[1], points.shape[1])
    for corner, gathered in _corners(flat, base, strides):
        weight = torch.ones_like(frac[..., 0])
        for k, bit in enumerate(corner):
            weight = weight * (frac[..., k] if bit else 1.0 - frac[..., k])
        out = out + gathered * weight.unsqueeze(1)
    return out.transpose(1, 2)


def interpolate_linear_with_grad(values: torch.Tensor, points: torch.Tensor) -> tuple:
    """:func:`interpolate_linear` and its spatial derivative in one pass.

    Returns the values (B, N, C) and d value / d point (B, N, d, C) in normalized units (zero
    along an axis where the point lies outside the grid, as the clamping implies). Both are
    differentiable (first order) with respect to ``values`` and ``points``.
    """
    flat, base, frac, dfrac, strides = _cell(values, points)
    d = points.shape[-1]
    one_minus = 1.0 - frac
    out = 0.0
    grads = [0.0] * d
    for corner, gathered in _corners(flat, base, strides):
        factors = [frac[..., k] if bit else one_minus[..., k] for k, bit in enumerate(corner)]
        weight = factors[0]
        for f in factors[1:]:
            weight = weight * f
        out = out + gathered * weight.unsqueeze(1)
        for k, bit in enumerate(corner):
            others = torch.ones_like(frac[..., 0])
            for j, f in enumerate(factors):
                if j != k:
                    others = others * f
            sign = 1.0 if bit else -1.0
            grads[k] = grads[k] + gathered * (sign * others * dfrac[..., k]).unsqueeze(1)
    return out.transpose(1, 2), torch.stack(grads, dim=1).permute(0, 3, 1, 2)
