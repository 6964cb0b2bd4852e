"""Invertible refinements R of the ``inr`` and ``velocity`` IO modes (point maps with an inverse).

* :class:`DisplacementRefinement`: R(x) = x + u(x), u a coordinate network; R^-1 by fixed-point
  iteration (:func:`fixed_point_inverse`), exact where R is invertible with a contracting u.
* :class:`FlowRefinement`: R the flow of a neural velocity field from t = 0 to 1 (torchdiffeq),
  R^-1 the flow back from t = 1 to 0.

Both map (B, N, d) frame points to (B, N, d) frame points (:mod:`nephi.transforms.base`).
"""

from __future__ import annotations

import torch
from torch import nn

from nephi.config.validate import FIXED_STEP_SOLVERS
from nephi.models.coordinate import CoordinateNet
from nephi.transforms.base import PointMap


# ------------------------------------------------------------------ refinements


def fixed_point_inverse(disp: PointMap, y: torch.Tensor, iterations: int,
                        tolerance: float) -> torch.Tensor:
    """x with x + disp(x) = y, for points y (B, N, d), by the iteration x <- y - disp(x).

    Starts from x = y - disp(y); stops after ``iterations`` evaluations or once no point moves
    by more than ``tolerance`` (frame units, max norm). Converges where disp is a contraction
    (|grad disp| < 1), i.e. where x + disp(x) is invertible without folding. Under
    ``torch.no_grad`` only points not yet converged are re-evaluated; with gradients enabled
    all points iterate together and the result is differentiable (unrolled iterations).
    """
    x = y - disp(y)
    if torch.is_grad_enabled():
        for _ in range(iterations - 1):
            new = y - disp(x)
            done = float((new - x).detach().abs().max()) <= tolerance
            x = new
            if done:
                break
        return x
    shape = y.shape
    yf, xf = y.reshape(1, -1, shape[-1]), x.reshape(1, -1, shape[-1]).clone()
    active = torch.arange(yf.shape[1], device=y.device)
    for _ in range(iterations - 1):
        if active.numel() == 0:
            break
        new = yf[:, active] - disp(xf[:, active])
        moved = (new - xf[:, active]).abs().amax(dim=-1)[0]
        xf[:, active] = new
        active = active[moved > tolerance]
    return xf.reshape(shape)


class DisplacementRefinement(nn.Module):
    """R(x) = x + u(x), u a :class:`CoordinateNet` in frame units; R^-1 by fixed-point iteration."""

    def __init__(self, net: CoordinateNet, iterations: int, tolerance: float):
        super().__init__()
        self.net, self.iterations, self.tolerance = net, int(iterations), float(tolerance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return fixed_point_inverse(self.net, y, self.iterations, self.tolerance)


class _VelocityField(nn.Module):
    """dy/dt = v(y[, t]) in the form torchdiffeq calls: forward(t, y), y (B, N, d)."""

    def __init__(self, net: CoordinateNet):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y, t) if self.net.time_input else self.net(y)


class FlowRefinement(nn.Module):
    """R = flow of dy/dt = v(y[, t]) from t = 0 to 1; R^-1 = the flow from t = 1 back to 0.

    ``solver``: a fixed-step torchdiffeq method (``ode_steps`` steps of 1 / ode_steps) or an
    adaptive one (``rtol``, ``atol``); ``adjoint``: backpropagate with ``odeint_adjoint``
    (memory independent of the number of steps; no double backward, so regularizers then need
    finite-difference derivatives). v is in frame units per unit time.
    """

    def __init__(self, net: CoordinateNet, solver: str = "rk4", ode_steps: int = 8,
                 rtol: float = 1e-5, atol: float = 1e-6, adjoint: bool = False):
        super().__init__()
        self.field = _VelocityField(net)
        self.solver, self.ode_steps = solver, int(ode_steps)
        self.rtol, self.atol, self.adjoint = float(rtol), float(atol), bool(adjoint)

    @property
    def net(self) -> CoordinateNet:
        return self.field.net

    def _integrate(self, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
        from torchdiffeq import odeint, odeint_adjoint

        t = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        kwargs = {"method": self.solver, "rtol": self.rtol, "atol": self.atol}
        if self.solver in FIXED_STEP_SOLVERS:
            kwargs["options"] = {"step_size": 1.0 / self.ode_steps}
        params = tuple(p for p in self.field.parameters() if p.requires_grad)
        if self.adjoint and torch.is_grad_enabled() and params:
            return odeint_adjoint(self.field, x, t, adjoint_params=params, **kwargs)[-1]
        return odeint(self.field, x, t, **kwargs)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._integrate(x, 0.0, 1.0)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._integrate(y, 1.0, 0.0)
