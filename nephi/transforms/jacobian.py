"""Spatial Jacobians of point maps, by several strategies.

``jacobian(fn, x, method)`` returns J (B, N, d, d) with ``J[..., i, j] = d fn_i / d x_j`` for a
map ``fn`` from points (B, N, d) to points (B, N, d). The result stays differentiable with respect
to whatever ``fn`` depends on (network weights, latent codes), as GradICON needs.

* ``"fd"``: forward differences, fn evaluated once on the (d + 1) N stacked points. No double
  backward needed, so it works through ``grid_sample`` too. Error O(eps).
* ``"fd-central"``: central differences on 2 d N points. Error O(eps^2).
* ``"autograd"``: reverse mode with ``create_graph=True``, d backward passes. Exact, but fn must
  be twice differentiable in x (nephi's latent interpolation is; ``grid_sample`` is not).
* ``"forward"``: forward-mode AD (``torch.func.jvp``), d passes. Exact, same requirement.
* ``"analytic"``: for maps that provide ``value_and_jacobian(x)`` (NePhi's field maps and their
  :class:`Composition`): the derivatives are carried through the network beside the values in
  one pass. Exact, and first-order backpropagation suffices.

``benchmarks/bench_jacobian.py`` measures their speed and agreement; the default is chosen there.
"""

from __future__ import annotations

import torch

from nephi.transforms.base import PointMap


METHODS = ("fd", "fd-central", "autograd", "forward")


NEPHI_METHODS = METHODS + ("analytic",)  # for maps with value_and_jacobian (NePhi field maps)


def jacobian(fn: PointMap, x: torch.Tensor, method: str = "fd", eps: float = 1e-3) -> torch.Tensor:
    """Jacobian of ``fn`` at points ``x`` (B, N, d) -> (B, N, d, d)."""
    if method == "fd":
        return _forward_difference(fn, x, eps)
    if method == "fd-central":
        return _central_difference(fn, x, eps)
    if method == "autograd":
        return _reverse_mode(fn, x)
    if method == "forward":
        return _forward_mode(fn, x)
    if method == "analytic":
        if not hasattr(fn, "value_and_jacobian"):
            raise ValueError("the 'analytic' Jacobian needs a map with value_and_jacobian "
                             f"(NePhi field maps); choose one of {', '.join(METHODS)}")
        return fn.value_and_jacobian(x)[1]
    raise ValueError(f"unknown Jacobian method {method!r}; choose one of "
                     f"{', '.join(NEPHI_METHODS)}")


def _steps(x: torch.Tensor, eps: float) -> torch.Tensor:
    d = x.shape[-1]
    return torch.eye(d, dtype=x.dtype, device=x.device) * eps


def _forward_difference(fn: PointMap, x: torch.Tensor, eps: float) -> torch.Tensor:
    b, n, d = x.shape
    shifted = x.unsqueeze(1) + _steps(x, eps).view(1, d, 1, d)
    stacked = torch.cat([x.unsqueeze(1), shifted], dim=1).reshape(b, (d + 1) * n, d)
    y = fn(stacked).reshape(b, d + 1, n, d)
    cols = (y[:, 1:] - y[:, :1]) / eps
    return cols.permute(0, 2, 3, 1)


def _central_difference(fn: PointMap, x: torch.Tensor, eps: float) -> torch.Tensor:
    b, n, d = x.shape
    step = _steps(x, eps).view(1, d, 1, d)
    stacked = torch.cat([x.unsqueeze(1) + step, x.unsqueeze(1) - step], dim=1)
    y = fn(stacked.reshape(b, 2 * d * n, d)).reshape(b, 2, d, n, d)
    cols = (y[:, 0] - y[:, 1]) / (2.0 * eps)
    return cols.permute(0, 2, 3, 1)


def _reverse_mode(fn: PointMap, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        rows = [torch.autograd.grad(y[..., i].sum(), x, create_graph=True)[0]
                for i in range(x.shape[-1])]
    return torch.stack(rows, dim=-2)


def _forward_mode(fn: PointMap, x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    cols = []
    for j in range(x.shape[-1]):
        tangent = torch.zeros_like(x)
        tangent[..., j] = 1.0
        cols.append(torch.func.jvp(fn, (x,), (tangent,))[1])
    return torch.stack(cols, dim=-1)


def jacobian_determinant_dense(field_index: torch.Tensor) -> torch.Tensor:
    """det of the Jacobian of a dense map given in voxel-index units on its own grid.

    ``field_index`` (d, *S): the map's value at every voxel as continuous voxel indices of the
    same grid (identity = the voxel's own index). Central differences inside, one-sided at the
    border; returns (*S) in ``field_index``'s dtype (computed in float64). The determinant is the
    same in index, normalized or physical units when the map's input and output live on the
    same grid.
    """
    d = field_index.shape[0]
    grads = [torch.gradient(field_index[i], dim=tuple(range(d))) for i in range(d)]
    jac = torch.stack([torch.stack(list(g), dim=-1) for g in grads], dim=-2)
    return torch.linalg.det(jac.double()).to(field_index.dtype)
