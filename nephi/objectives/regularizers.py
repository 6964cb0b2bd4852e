"""Named regularizer terms on point maps, shared by every instance-optimization mode.

Every term acts on a point map ``fn: (B, N, d) -> (B, N, d)`` (d = 2 or 3) evaluated at sample
points ``x`` (B, N, d). ``fn`` must treat each point independently (no coupling across points, as
for any coordinate network), because derivatives are taken by summing over points. Each term is
a scalar tensor: the mean over points and batch, i.e. a Monte-Carlo estimate of
``(1 / |Omega|) * integral over Omega`` of the papers' integrands, so a weight does not depend on
the domain's volume. All terms stay differentiable with respect to what ``fn`` depends on
(network weights, latent codes).

First derivatives come from :func:`nephi.transforms.jacobian.jacobian` (``method`` one of ``"fd"``,
``"fd-central"``, ``"autograd"``, ``"forward"``; ``eps`` its finite-difference step). Second
derivatives (bending energy) use double backward (``"autograd"``), nested forward-mode AD
(``"forward"``) or central second differences (``"fd"``, ``"fd-central"``).

Formulas (Wolterink et al. 2022, IDIR, sec. 2.2; Zwienenberg 2021 thesis, sec. 2.3,
eqs. 2.8, 2.9, 2.13; bending energy IDIR eq. 3 after Rueckert et al. 1999), with
Phi(x) = x + u(x), J = grad Phi, grad u = J - I:

* ``jacobian_det``:  |1 - det J|                                   (IDIR S^jac, thesis eq. 2.8)
* ``negative_det``:  relu(margin - det J)                           (folding penalty, ours)
* ``diffusion``:     ||J - I||_F^2 = ||grad u||_F^2                 (thesis eq. 2.9 without 1/2)
* ``hyperelastic``:  alpha_l * 1/2 ||grad u||_F^2 + alpha_a * phi_c(cof J) + alpha_v * psi(det J)
  with phi_c(C) = sum_i max(sum_j C_ji^2 - 1, 0)^2 and psi(v) = (v - 1)^4 / v^2
                                                                   (IDIR S^hyper, thesis eq. 2.13)
* ``bending_energy``: sum_i sum_jk (d^2 u_i / dx_j dx_k)^2          (IDIR eq. 3)
* ``gradicon``:      ||J_c - I||_F^2, J_c the Jacobian of fn(inverse_fn(x))  (NePhi eq. 5; the
  formula: :func:`gradicon`)

Units and coordinate frames. Derivatives are taken with respect to the coordinates of ``x``:
nephi's normalized frame coordinates ([-1, 1]^d on the fixed grid, align_corners=True) unless
the caller passes points in mm. When ``fn``'s input and output are in the same frame, with
``s_k`` mm per normalized unit along axis k (``s_k = spacing_k * (N_k - 1) / 2``):

* det J is frame-independent, so ``jacobian_det``, ``negative_det`` and the hyperelastic volume
  part have the same value, and weight, in normalized and mm coordinates.
* Under an isotropic scale (all ``s_k = s``) first derivatives are unchanged as well, so
  ``diffusion``, ``gradicon`` and all hyperelastic parts keep their value and weight; second
  derivatives scale by 1/s, so ``bending_energy`` in mm equals the normalized value / s^2, and a
  weight w_norm given for normalized coordinates corresponds to w_mm = w_norm * s^2.
* Under an anisotropic scale no single factor converts these terms; convert the Jacobian with
  :func:`jacobian_to_mm` (J_mm = S J S^-1, S = diag(s)) and second derivatives with
  H_mm[i, j, k] = s_i H[i, j, k] / (s_j s_k) (``mm_per_unit`` argument of the functions below),
  so the weights refer to mm coordinates.
* A rotation of the grid in physical space (NIfTI direction cosines) changes none of the terms
  except the hyperelastic area part (phi_c hinges each cofactor column separately), so the
  diagonal S is the conversion that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from nephi.objectives.terms import Term
from nephi.transforms.base import Composition, PointMap
from nephi.transforms.jacobian import NEPHI_METHODS, jacobian


HYPERELASTIC_DEFAULTS = {"alpha_l": 1.0, "alpha_a": 1.0, "alpha_v": 1.0}
"""Default hyperelastic weights: the papers give none; IDIR's reference code
(``compute_hyper_elastic_loss``) uses alpha_l = alpha_a = alpha_v = 1 inside an outer weight."""


NEGATIVE_DET_MARGIN = 1e-2
"""Default margin of :func:`negative_det`: volume ratios below 1 % are penalized."""


BENDING_METHODS = ("autograd", "forward", "fd", "fd-central")


def determinant(J: torch.Tensor) -> torch.Tensor:
    """det J for J (..., d, d) -> (...), closed form for d = 2, 3 (no LU, smooth everywhere)."""
    d = J.shape[-1]
    if d == 2:
        return J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
    if d == 3:
        return (J[..., :, 0] * torch.linalg.cross(J[..., :, 1], J[..., :, 2], dim=-1)).sum(dim=-1)
    return torch.linalg.det(J)


def gradicon(jac: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean over points of ||J - I||_F^2 for J (B, N, d, d) of phi_AB(phi_BA(x)).

    Unit: squared Frobenius norm of a Jacobian in frame (normalized) coordinates, which are
    isotropic in normalized units, not in mm, when spacing or extent differ between axes.
    """
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return ((jac - eye) ** 2).sum(dim=(-2, -1)).mean()


def cofactor(J: torch.Tensor) -> torch.Tensor:
    """Cofactor matrix cof J (..., d, d), d = 2 or 3: cof J = det(J) J^-T where J is invertible.

    Closed form without inversion, so it is defined for singular J too. d = 3: column k of
    cof J is the cross product of columns k+1 and k+2 of J (indices mod 3). d = 2:
    cof [[a, b], [c, e]] = [[e, -c], [-b, a]].
    """
    d = J.shape[-1]
    if d == 2:
        row0 = torch.stack([J[..., 1, 1], -J[..., 1, 0]], dim=-1)
        row1 = torch.stack([-J[..., 0, 1], J[..., 0, 0]], dim=-1)
        return torch.stack([row0, row1], dim=-2)
    if d == 3:
        cols = [torch.linalg.cross(J[..., :, (k + 1) % 3], J[..., :, (k + 2) % 3], dim=-1)
                for k in range(3)]
        return torch.stack(cols, dim=-1)
    raise ValueError(f"cofactor is implemented for d = 2 or 3, got d = {d}")


def _eye_like(J: torch.Tensor) -> torch.Tensor:
    return torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)


def jacobian_det(J: torch.Tensor) -> torch.Tensor:
    """IDIR's Jacobian regularizer: mean over (B, N) of |1 - det J|. J (B, N, d, d) -> scalar.

    IDIR sec. 2.2 "Jacobian regularizer", thesis eq. 2.8: S^jac = integral |1 - det grad Phi|.
    Unit: volume ratio (dimensionless, frame-independent).
    """
    return (1.0 - determinant(J)).abs().mean()


def negative_det(J: torch.Tensor, eps: float = NEGATIVE_DET_MARGIN) -> torch.Tensor:
    """Folding penalty: mean over (B, N) of relu(eps - det J). J (B, N, d, d) -> scalar.

    Zero wherever det J >= eps; grows linearly with how far det J falls below eps, so it
    pushes points back before they fold (det J <= 0 means folding, loss of invertibility).
    ``eps`` = 0 penalizes folded points only. Not from the papers: a one-sided complement to
    :func:`jacobian_det` (which also penalizes expansion) and to the hyperelastic psi, which is
    finite for det J < 0. Unit: volume ratio (dimensionless, frame-independent).
    """
    return torch.relu(eps - determinant(J)).mean()


def diffusion(J: torch.Tensor) -> torch.Tensor:
    """Diffusion regularizer: mean over (B, N) of ||J - I||_F^2 = ||grad u||_F^2. -> scalar.

    Thesis eq. 2.9 (Ruthotto) without its factor 1/2. Unit: (coordinate unit / coordinate
    unit)^2 of the frame J is expressed in; unchanged by an isotropic change of scale.
    """
    return ((J - _eye_like(J)) ** 2).sum(dim=(-2, -1)).mean()


@dataclass
class Hyperelastic:
    """Parts of the hyperelastic regularizer (scalars, means over points and batch).

    ``length`` = mean 1/2 ||grad u||_F^2, ``area`` = mean phi_c(cof J), ``volume`` =
    mean psi(det J), all unweighted; ``total`` = alpha_l length + alpha_a area + alpha_v volume.
    """

    total: torch.Tensor
    length: torch.Tensor
    area: torch.Tensor
    volume: torch.Tensor


def hyperelastic(J: torch.Tensor, alpha_l: float = HYPERELASTIC_DEFAULTS["alpha_l"],
                 alpha_a: float = HYPERELASTIC_DEFAULTS["alpha_a"],
                 alpha_v: float = HYPERELASTIC_DEFAULTS["alpha_v"]) -> Hyperelastic:
    """Hyperelastic regularizer of Burger, Modersitzki & Ruthotto (2013) as IDIR uses it.

    IDIR sec. 2.2 "Hyperelastic regularizer" and thesis eq. 2.13, for J = grad Phi (B, N, d, d):

        S^hyper = integral [1/2 alpha_l ||grad u||_F^2 + alpha_a phi_c(cof J) + alpha_v psi(det J)]

    * length: 1/2 ||grad u||_F^2 with grad u = J - I;
    * area: phi_c(C) = sum_i max(sum_j C_ji^2 - 1, 0)^2, C = cof J: for every column i of the
      cofactor matrix (how a unit area element normal to axis i is scaled), a squared hinge on
      the growth of its squared norm above 1, so only area expansion is penalized;
    * volume: psi(v) = (v - 1)^4 / v^2, convex for v > 0 with psi(v) = psi(1/v), so growth and
      shrinkage are penalized alike; psi -> inf as det J -> 0 but psi is finite for det J < 0,
      so combine with :func:`negative_det` where folding must be excluded.

    The papers write d = 3; the same formulas are used for d = 2 (sums over 2 columns).
    Returns the unweighted mean parts and the weighted total (see :class:`Hyperelastic`).
    Units: dimensionless; length and area depend on the frame's axis scaling, volume does not.
    """
    grad_u = J - _eye_like(J)
    length = 0.5 * (grad_u ** 2).sum(dim=(-2, -1))
    cof = cofactor(J)
    column_sq = (cof ** 2).sum(dim=-2)
    area = (torch.relu(column_sq - 1.0) ** 2).sum(dim=-1)
    v = (J[..., :, 0] * cof[..., :, 0]).sum(dim=-1)
    volume = (v - 1.0) ** 4 / v ** 2
    length, area, volume = length.mean(), area.mean(), volume.mean()
    total = alpha_l * length + alpha_a * area + alpha_v * volume
    return Hyperelastic(total=total, length=length, area=area, volume=volume)


def jacobian_to_mm(J: torch.Tensor, mm_per_unit: torch.Tensor) -> torch.Tensor:
    """Convert J (..., d, d) taken in normalized coordinates to mm: J_mm = S J S^-1.

    ``mm_per_unit`` (d,): mm per normalized unit along each axis, S = diag(mm_per_unit).
    Valid when fn's input and output are in the same normalized frame: with x_mm = S x and
    Phi_mm(x_mm) = S Phi(S^-1 x_mm), d Phi_mm / d x_mm = S J S^-1, i.e.
    J_mm[i, j] = s_i J[i, j] / s_j. det J is unchanged.
    """
    s = torch.as_tensor(mm_per_unit, dtype=J.dtype, device=J.device)
    return J * s.unsqueeze(-1) / s.unsqueeze(-2)


def hessian_to_mm(H: torch.Tensor, mm_per_unit: torch.Tensor) -> torch.Tensor:
    """Convert second derivatives H (..., d, d, d), H[..., i, j, k] = d^2 fn_i / dx_j dx_k,
    from normalized coordinates to mm: H_mm[i, j, k] = s_i H[i, j, k] / (s_j s_k)."""
    s = torch.as_tensor(mm_per_unit, dtype=H.dtype, device=H.device)
    return H * s.view(-1, 1, 1) / (s.view(1, -1, 1) * s.view(1, 1, -1))


def default_bending_eps(dtype: torch.dtype) -> float:
    """Step of the second-difference stencil: 1e-4 in float64, 2e-2 otherwise.

    Round-off of a second difference grows like eps_machine |fn| / h^2 and truncation like
    h^2 |d^4 fn|, so h ~ eps_machine^(1/4) balances them: 2e-2 in float32 is about one voxel of a
    100-voxel axis in normalized coordinates.
    """
    return 1e-4 if dtype == torch.float64 else 2e-2


def _grad(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not out.requires_grad:
        return torch.zeros_like(x)
    g = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)[0]
    return torch.zeros_like(x) if g is None else g


def _autograd_derivatives(fn: PointMap, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J (B, N, d, d) and H (B, N, d, d, d) from one forward pass and d + d^2 backward passes."""
    x = x.detach().requires_grad_(True)
    d = x.shape[-1]
    with torch.enable_grad():
        y = fn(x)
        rows = [_grad(y[..., i], x) for i in range(d)]
        hess = [torch.stack([_grad(rows[i][..., j], x) for j in range(d)], dim=-2)
                for i in range(d)]
    return torch.stack(rows, dim=-2), torch.stack(hess, dim=-3)


def _forward_hessian(fn: PointMap, x: torch.Tensor) -> torch.Tensor:
    """H (B, N, d, d, d) by nested forward-mode AD, d (d + 1) / 2 nested jvps (H symmetric)."""
    x = x.detach()
    d = x.shape[-1]

    def unit(j: int) -> torch.Tensor:
        t = torch.zeros_like(x)
        t[..., j] = 1.0
        return t

    def directional(j: int) -> PointMap:
        return lambda p: torch.func.jvp(fn, (p,), (unit(j),))[1]

    blocks = [[None] * d for _ in range(d)]
    for j in range(d):
        for k in range(j, d):
            blocks[j][k] = torch.func.jvp(directional(j), (x,), (unit(k),))[1]
            blocks[k][j] = blocks[j][k]
    return torch.stack([torch.stack(row, dim=-1) for row in blocks], dim=-2)


def _difference_hessian(fn: PointMap, x: torch.Tensor, h: float) -> torch.Tensor:
    """H (B, N, d, d, d) by central second differences, fn evaluated once on (1 + 2 d^2) N points.

    d^2 f / dx_j^2 ~ (f(x + h e_j) - 2 f(x) + f(x - h e_j)) / h^2;
    d^2 f / dx_j dx_k ~ (f(x + h e_j + h e_k) - f(x + h e_j - h e_k)
                         - f(x - h e_j + h e_k) + f(x - h e_j - h e_k)) / (4 h^2). Error O(h^2).
    """
    b, n, d = x.shape
    e = torch.eye(d, dtype=x.dtype, device=x.device) * h
    offsets = [torch.zeros(d, dtype=x.dtype, device=x.device)]
    for j in range(d):
        offsets += [e[j], -e[j]]
    pairs = [(j, k) for j in range(d) for k in range(j + 1, d)]
    for j, k in pairs:
        offsets += [e[j] + e[k], e[j] - e[k], -e[j] + e[k], -e[j] - e[k]]
    offsets = torch.stack(offsets)
    m = offsets.shape[0]
    stacked = (x.unsqueeze(1) + offsets.view(1, m, 1, d)).reshape(b, m * n, d)
    f = fn(stacked).reshape(b, m, n, d)
    centre = f[:, 0]
    blocks = [[None] * d for _ in range(d)]
    for j in range(d):
        blocks[j][j] = (f[:, 1 + 2 * j] - 2.0 * centre + f[:, 2 + 2 * j]) / h ** 2
    base = 1 + 2 * d
    for p, (j, k) in enumerate(pairs):
        q = f[:, base + 4 * p: base + 4 * p + 4]
        blocks[j][k] = (q[:, 0] - q[:, 1] - q[:, 2] + q[:, 3]) / (4.0 * h ** 2)
        blocks[k][j] = blocks[j][k]
    return torch.stack([torch.stack(row, dim=-1) for row in blocks], dim=-2)


def hessian(fn: PointMap, x: torch.Tensor, method: str = "autograd",
            eps: Optional[float] = None) -> torch.Tensor:
    """Second derivatives H (B, N, d, d, d), H[..., i, j, k] = d^2 fn_i / dx_j dx_k, at x (B, N, d).

    ``method``: ``"autograd"`` (double backward; fn must be twice differentiable in x, which
    rules out ``grid_sample``), ``"forward"`` (nested forward-mode AD, same requirement), or
    ``"fd"`` / ``"fd-central"`` (central second differences with step ``eps``, default
    :func:`default_bending_eps`; only fn evaluations, so it works through anything).
    """
    if method == "autograd":
        return _autograd_derivatives(fn, x)[1]
    if method == "forward":
        return _forward_hessian(fn, x)
    if method in ("fd", "fd-central"):
        return _difference_hessian(fn, x, default_bending_eps(x.dtype) if eps is None else eps)
    raise ValueError(f"unknown second-derivative method {method!r}; "
                     f"choose one of {', '.join(BENDING_METHODS)}")


def bending_from_hessian(H: torch.Tensor) -> torch.Tensor:
    """Mean over (B, N) of sum_i sum_jk H[..., i, j, k]^2 for H (B, N, d, d, d) -> scalar."""
    return (H ** 2).sum(dim=(-3, -2, -1)).mean()


def bending_energy(fn: PointMap, x: torch.Tensor, method: str = "autograd",
                   eps: Optional[float] = None,
                   mm_per_unit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bending energy (Rueckert et al. 1999; IDIR eq. 3): mean over points and batch of

        sum_i sum_{j,k} (d^2 u_i / dx_j dx_k)^2
          = sum_i [sum_j (d^2 u_i / dx_j^2)^2 + 2 sum_{j<k} (d^2 u_i / dx_j dx_k)^2],

    u = fn(x) - x (same second derivatives as fn). IDIR's 1/8 prefactor over [-1, 1]^3 is the
    domain mean taken here. ``method``/``eps``: see :func:`hessian`. ``mm_per_unit`` (d,),
    optional: x is in normalized coordinates and the energy is reported in mm (see
    :func:`hessian_to_mm`). Unit: 1 / (coordinate unit)^2; an affine map has zero energy.
    """
    H = hessian(fn, x, method, eps)
    if mm_per_unit is not None:
        H = hessian_to_mm(H, mm_per_unit)
    return bending_from_hessian(H)


def _maybe_mm(J: torch.Tensor, mm_per_unit: Optional[torch.Tensor]) -> torch.Tensor:
    return J if mm_per_unit is None else jacobian_to_mm(J, mm_per_unit)


def _composition(fn: PointMap, inverse_fn: Optional[PointMap]) -> PointMap:
    if inverse_fn is None:
        raise ValueError("the gradicon term needs inverse_fn: its Jacobian is that of "
                         "fn(inverse_fn(x)), i.e. phi_AB(phi_BA(x))")
    return Composition(fn, inverse_fn)


def _jacobian_value(name: str, J: torch.Tensor, params: dict) -> torch.Tensor:
    if name == "jacobian_det":
        return jacobian_det(J)
    if name == "negative_det":
        return negative_det(J, params.get("det_margin", NEGATIVE_DET_MARGIN))
    if name == "diffusion":
        return diffusion(J)
    if name == "hyperelastic":
        return _hyperelastic_from(J, params).total
    raise KeyError(name)


def _hyperelastic_from(J: torch.Tensor, params: dict) -> Hyperelastic:
    alphas = {k: params.get(k, v) for k, v in HYPERELASTIC_DEFAULTS.items()}
    return hyperelastic(J, **alphas)


def _registry_jacobian_term(name: str) -> Callable[..., torch.Tensor]:
    def term(fn: PointMap, x: torch.Tensor, method: str = "autograd", eps: float = 1e-3,
             **params) -> torch.Tensor:
        J = _maybe_mm(jacobian(fn, x, method, eps), params.get("mm_per_unit"))
        return _jacobian_value(name, J, params)

    term.__name__ = name
    term.__doc__ = (f"Registry form of ``{name}``: (fn, x, method, eps, **params) -> scalar; "
                    "params: mm_per_unit, alpha_l, alpha_a, alpha_v, det_margin.")
    return term


def _registry_gradicon(fn: PointMap, x: torch.Tensor, method: str = "autograd",
                       eps: float = 1e-3, **params) -> torch.Tensor:
    """Registry form of GradICON: ||J - I||_F^2 of fn(inverse_fn(x)); needs ``inverse_fn``."""
    composed = _composition(fn, params.get("inverse_fn"))
    return gradicon(_maybe_mm(jacobian(composed, x, method, eps),
                                     params.get("mm_per_unit")))


def _registry_bending(fn: PointMap, x: torch.Tensor, method: str = "autograd",
                      eps: float = 1e-3, **params) -> torch.Tensor:
    """Registry form of the bending energy. ``eps`` (first-derivative step) is not used: the
    second-difference step is ``bending_eps`` (default :func:`default_bending_eps`)."""
    return bending_energy(fn, x, method, params.get("bending_eps"), params.get("mm_per_unit"))


JACOBIAN_TERMS = ("jacobian_det", "negative_det", "diffusion", "hyperelastic")


TERM_PARAMS = ("alpha_l", "alpha_a", "alpha_v", "det_margin", "bending_eps")


REGULARIZERS: dict[str, Callable[..., torch.Tensor]] = {
    **{name: _registry_jacobian_term(name) for name in JACOBIAN_TERMS},
    "bending_energy": _registry_bending,
    "gradicon": _registry_gradicon,
}
"""name -> callable ``(fn, x, method="autograd", eps=1e-3, **params) -> scalar tensor``.

``params`` may hold ``inverse_fn`` (gradicon), ``alpha_l``, ``alpha_a``, ``alpha_v``
(hyperelastic), ``det_margin`` (negative_det), ``bending_eps``, ``mm_per_unit``; each callable
reads what it needs. Each call computes its own derivatives; :func:`regularizer_terms` shares them.
"""


def _units(coords: str) -> dict[str, str]:
    ratio = f"({coords}/{coords})^2"
    return {
        "jacobian_det": "1 (volume ratio)",
        "negative_det": "1 (volume ratio)",
        "diffusion": ratio,
        "hyperelastic": f"1 (length, area parts in {coords} frame)",
        "hyperelastic/length": ratio,
        "hyperelastic/area": f"(area ratio)^2 in {coords} frame",
        "hyperelastic/volume": "1 (volume ratio)",
        "bending_energy": f"1/{coords}^2",
        "gradicon": ratio,
    }


def regularizer_terms(fn: PointMap, x: torch.Tensor, weights: dict, method: str = "autograd",
                      eps: float = 1e-3, inverse_fn: Optional[PointMap] = None,
                      mm_per_unit: Optional[torch.Tensor] = None, coords: Optional[str] = None,
                      **params) -> dict[str, Term]:
    """Turn ``weights`` (name -> weight, e.g. ``{"gradicon": 10, "hyperelastic": 1}``) into terms.

    ``fn`` (B, N, d) -> (B, N, d) at points ``x`` (B, N, d); ``method``/``eps``: first-derivative
    strategy and step of :func:`nephi.transforms.jacobian.jacobian` (and the second-derivative method of
    the bending energy, see :func:`hessian`; with ``"analytic"``, for maps with
    ``value_and_jacobian``, a bending term takes J and H from one reverse-mode pass). J = d fn / d x is computed once and shared by
    ``jacobian_det``, ``negative_det``, ``diffusion`` and ``hyperelastic``; with
    ``method="autograd"`` the bending energy reuses the same forward pass. ``gradicon`` uses the
    Jacobian of ``fn(inverse_fn(x))`` (phi_AB(phi_BA(x))) and needs ``inverse_fn``.

    ``mm_per_unit`` (d,), optional: x is in normalized coordinates and derivatives are converted
    to mm (:func:`jacobian_to_mm`, :func:`hessian_to_mm`) so that weights refer to mm. ``coords``
    labels the units of x in the Term units (default "mm" with ``mm_per_unit``, else
    "normalized"; pass "mm" when x itself is in mm). ``params``: ``alpha_l``, ``alpha_a``,
    ``alpha_v`` (hyperelastic), ``det_margin`` (negative_det), ``bending_eps`` (second-difference
    step, default :func:`default_bending_eps`).

    Returns name -> :class:`nephi.objectives.terms.Term` (value, weight, unit), in the order of ``weights``;
    with ``hyperelastic`` also ``hyperelastic/length``, ``/area``, ``/volume``: the unweighted
    parts, detached, with weight 0 (diagnostics, not part of :func:`nephi.objectives.terms.total`).
    """
    unknown = [name for name in weights if name not in REGULARIZERS]
    if unknown:
        raise ValueError(f"unknown regularizer(s) {unknown}; choose from {sorted(REGULARIZERS)}")
    unknown = sorted(set(params) - set(TERM_PARAMS))
    if unknown:
        raise ValueError(f"unknown regularizer parameter(s) {unknown}; choose from {TERM_PARAMS}")
    if method not in NEPHI_METHODS:
        raise ValueError(f"unknown derivative method {method!r}; choose one of {NEPHI_METHODS}")
    coords = coords or ("mm" if mm_per_unit is not None else "normalized")
    units = _units(coords)
    need_j = any(name in JACOBIAN_TERMS for name in weights)
    need_h = "bending_energy" in weights

    J = H = None
    if method in ("autograd", "analytic") and need_h:
        # one reverse-mode pass gives both ("analytic" carries first derivatives only)
        J, H = _autograd_derivatives(fn, x)
    else:
        if need_j:
            J = jacobian(fn, x, method, eps)
        if need_h:
            H = hessian(fn, x, method, params.get("bending_eps"))
    if J is not None:
        J = _maybe_mm(J, mm_per_unit)
    if H is not None and mm_per_unit is not None:
        H = hessian_to_mm(H, mm_per_unit)

    terms: dict[str, Term] = {}
    for name, weight in weights.items():
        weight = float(weight)
        if name == "gradicon":
            Jc = jacobian(_composition(fn, inverse_fn), x, method, eps)
            terms[name] = Term(gradicon(_maybe_mm(Jc, mm_per_unit)), weight,
                                      units[name])
        elif name == "bending_energy":
            terms[name] = Term(bending_from_hessian(H), weight, units[name])
        elif name == "hyperelastic":
            parts = _hyperelastic_from(J, params)
            terms[name] = Term(parts.total, weight, units[name])
            for part in ("length", "area", "volume"):
                key = f"hyperelastic/{part}"
                terms[key] = Term(getattr(parts, part).detach(), 0.0, units[key])
        else:
            terms[name] = Term(_jacobian_value(name, J, params), weight, units[name])
    return terms
