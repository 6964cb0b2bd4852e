"""Instance-optimization (IO) modes: what IO optimizes, and the point maps it yields.

One engine, :func:`nephi.optimize.instance_optimize`, runs every mode: it builds the mode
(:func:`build_mode`), runs Adam over the mode's stages on the terms the mode returns, and asks
the mode for the final point maps ``(phi_AB, phi_BA)``. Directions as everywhere in nephi
(A = moving, B = fixed): phi_AB maps FIXED points to MOVING points (warped = I_A(phi_AB(x))),
phi_BA maps moving points to fixed points. All points are in the frame of the pair IO sees
(the fixed grid's normalized coordinates [-1, 1]^d, or the network grid's with a checkpoint;
see :func:`nephi.register.register`), as (B, N, d) tensors.

Modes (config key ``io.mode``, ``nephi-infer --io-mode``):

* ``nephi``: NePhi's field networks and latent codes (copies), the loss of eq. 8 (similarity
  both ways, GradICON, latent prior) plus any extra regularizer of ``loss.regularizers`` on
  phi_AB. phi_BA is the backward field network.
* ``inr``: an IDIR-style coordinate network u (:class:`nephi.inr.CoordinateNet`, SIREN by
  default) gives a refinement R(x) = x + u(x). phi_BA uses R^-1 computed by fixed-point
  iteration (:func:`fixed_point_inverse`), not a second network: the inverse is exact up to the
  iteration's tolerance wherever R is invertible with a contracting u (|grad u| < 1), so the
  reported inverse consistency measures how invertible the optimized map is and nothing else.
* ``velocity``: a coordinate network v(x) (or v(x, t)) is a velocity field; R is its flow from
  t = 0 to 1 (torchdiffeq ``odeint``, or ``odeint_adjoint``) and R^-1 the flow from t = 1 back
  to 0 (for a stationary v: the flow of -v), the true inverse up to integration error.

With a given map (a trained network's prediction: ``init`` = (fields, latent)), ``inr`` and
``velocity`` refine on top of it: phi_AB = B_AB o R (R acts first on the fixed points, then the
prediction B_AB), phi_BA = R^-1 o B_BA, so IO starts exactly where the network left off (R
starts as the identity: the output layer is zero); during IO B is read from a table
(``io.given_map_grid``, :func:`tabulate`) for speed, the exported maps use the network itself.
Without one B is the identity. A cascade
(``stages`` > 1; Byra et al. 2023) trains R_1, freezes it, and trains R_2 on top:
phi_AB = B_AB o R_1 o R_2, phi_BA = R_2^-1 o R_1^-1 o B_BA. The given network is copied and
never changed.

Similarity (every mode, on points sampled in the fixed mask when there is one): the weighted
sum ``io.similarity`` of :func:`nephi.losses.similarity_terms`. ``inr`` and ``velocity`` use
the forward direction only, as IDIR and NIR do.

Regularizers (every mode): ``<section>.regularizers``, name -> weight over
:data:`nephi.regularizers.REGULARIZERS` (terms of weight 0 are skipped), applied to phi_AB (the
whole map, prediction included) at ``reg_points`` points, with first derivatives by
``jacobian`` (autograd by default; ``fd``/``fd-central`` finite differences of step ``fd_eps``
frame units as an option). ``io.regularizer_space`` says which coordinates the weights refer
to: ``normalized`` (default; derivatives in frame units, i.e. each axis scaled to [-1, 1]) or
``mm`` (derivatives converted with the frame's mm per unit s_k = spacing_k (N_k - 1) / 2, see
:mod:`nephi.regularizers`; for an isotropic s the Jacobian terms keep their value and a bending
weight w_norm corresponds to w_mm = w_norm s^2). GradICON on phi_AB o phi_BA is available in
every mode but only informative in ``nephi``: in ``inr`` and ``velocity`` phi_BA is (up to
tolerance or integration error) the exact inverse, so the term is near zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .dense import evaluate_chunked
from .derivatives import METHODS as DERIVATIVE_METHODS
from .errors import NephiInputError
from .inr import CoordinateNet, CoordinateNetConfig
from .losses import SIMILARITIES, similarity_terms, stencil_offsets
from .networks import Latent, NephiFields, field_config_from_dict
from .objective import nephi_terms
from .pair import PairTensors
from .regularizers import HYPERELASTIC_DEFAULTS, REGULARIZERS, regularizer_terms
from .sampling import interpolate_linear

MODES = ("nephi", "inr", "velocity")
REGULARIZER_SPACES = ("normalized", "mm")
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4")
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

PointMap = Callable[[torch.Tensor], torch.Tensor]


def option_key(mode: str, option: str) -> str:
    """Config key a command-line option sets for ``mode``: ``steps``, ``points``,
    ``reg_points``, ``lr`` -> ``optim.<option>`` (nephi) or ``<mode>.<option>``."""
    return f"optim.{option}" if mode == "nephi" else f"{mode}.{option}"


def io_steps(cfg: dict) -> int:
    """Optimization steps per stage of the active mode (``optim.steps`` or ``<mode>.steps``)."""
    section, key = option_key(cfg["io"]["mode"], "steps").split(".")
    return int(cfg[section][key])


@dataclass
class Stage:
    """One optimization phase: Adam ``groups`` (parameter groups with lr) for ``steps`` steps;
    stage ``index`` (0-based) of ``count``."""

    label: str
    groups: list
    steps: int
    index: int = 0
    count: int = 1


def initial_state(cfg: dict, ndim: int, device) -> tuple:
    """Fresh NePhi fields (identity maps) and random latent codes, seeded by ``cfg['seed']``."""
    torch.manual_seed(int(cfg["seed"]))
    fcfg = field_config_from_dict({**cfg["model"], "ndim": ndim})
    fields = NephiFields(fcfg, seed=int(cfg["seed"])).to(device)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    latent = Latent.random(1, fcfg, float(cfg["latent"]["sigma"]), generator=gen, device=device)
    return fields, latent


def frozen_copy(fields: NephiFields, latent: Latent) -> tuple:
    """Copies of (fields, latent) that no optimizer can reach: parameters without gradients."""
    fields = copy.deepcopy(fields)
    fields.requires_grad_(False)
    return fields, latent.detach_clone()


# ------------------------------------------------------------------ validation


def _fail(key: str, why: str):
    raise NephiInputError(f"config key {key}: {why}")


def _check_weights(key: str, weights, known) -> None:
    if not isinstance(weights, dict):
        _fail(key, f"must be a mapping of name -> weight, got {weights!r}")
    for name, w in weights.items():
        if name not in known:
            _fail(f"{key}.{name}", f"unknown term; choose from {', '.join(sorted(known))}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            _fail(f"{key}.{name}", f"weight must be a number >= 0, got {w!r}")


def _check_positive(key: str, value, integer: bool = False, zero: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (value >= 0 if zero else value > 0):
        _fail(key, f"must be {'an integer' if integer else 'a number'} "
                   f"{'>= 0' if zero else '> 0'}, got {value!r}")


def validate_io_config(cfg: dict) -> None:
    """Check the ``io`` section and the active mode's section; NephiInputError names the key."""
    io = cfg["io"]
    mode = io["mode"]
    if mode not in MODES:
        raise NephiInputError(f"--io-mode / config key io.mode: {mode!r} is not one of "
                              f"{', '.join(MODES)}")
    _check_weights("io.similarity", io["similarity"], SIMILARITIES)
    if not any(float(w) > 0 for w in io["similarity"].values()):
        _fail("io.similarity", "at least one weight must be > 0")
    try:
        stencil_offsets(io["lncc_window"], (3,))
    except ValueError as exc:
        _fail("io.lncc_window", str(exc))
    if io["regularizer_space"] not in REGULARIZER_SPACES:
        _fail("io.regularizer_space", f"{io['regularizer_space']!r} is not one of "
                                      f"{', '.join(REGULARIZER_SPACES)}")
    for name in HYPERELASTIC_DEFAULTS:
        _check_positive(f"io.hyperelastic.{name}", io["hyperelastic"][name], zero=True)
    _check_positive("io.det_margin", io["det_margin"], zero=True)
    _check_positive("io.given_map_grid", io["given_map_grid"], integer=True, zero=True)
    if 0 < io["given_map_grid"] < 2:
        _fail("io.given_map_grid", "must be 0 (use the network) or >= 2")
    if io["bending_eps"] is not None:
        _check_positive("io.bending_eps", io["bending_eps"])
    if mode == "nephi":
        _check_weights("loss.regularizers", cfg["loss"]["regularizers"],
                       set(REGULARIZERS) - {"gradicon"})
        return
    sec = cfg[mode]
    _check_positive(f"{mode}.steps", sec["steps"], integer=True, zero=True)
    for key in ("points", "reg_points", "stages"):
        _check_positive(f"{mode}.{key}", sec[key], integer=True)
    for key in ("lr", "fd_eps", "stage_reg_scale"):
        _check_positive(f"{mode}.{key}", sec[key])
    if sec["jacobian"] not in DERIVATIVE_METHODS:
        _fail(f"{mode}.jacobian", f"{sec['jacobian']!r} is not one of "
                                  f"{', '.join(DERIVATIVE_METHODS)}")
    _check_weights(f"{mode}.regularizers", sec["regularizers"], REGULARIZERS)
    try:
        CoordinateNetConfig.from_dict(sec["network"])
    except (TypeError, ValueError) as exc:
        _fail(f"{mode}.network", str(exc))
    if mode == "inr":
        _check_positive("inr.inverse_iterations", sec["inverse_iterations"], integer=True)
        _check_positive("inr.inverse_tolerance", sec["inverse_tolerance"])
    else:
        solver = sec["solver"]
        if solver not in FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS:
            _fail("velocity.solver", f"{solver!r} is not one of "
                                     f"{', '.join(FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS)}")
        _check_positive("velocity.ode_steps", sec["ode_steps"], integer=True)
        for key in ("rtol", "atol"):
            _check_positive(f"velocity.{key}", sec[key])
        if sec["adjoint"] and sec["jacobian"] in ("autograd", "forward") and any(
                float(w) > 0 for w in sec["regularizers"].values()):
            _fail("velocity.jacobian", "with velocity.adjoint the regularizers need finite "
                                       "differences (fd or fd-central): the adjoint method "
                                       "has no double backward")


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


# ------------------------------------------------------------------ modes


class _Regularization:
    """Regularizer weights and settings of one mode, applied with :func:`regularizer_terms`."""

    def __init__(self, weights: dict, method: str, eps: float, io_cfg: dict, pair: PairTensors):
        self.weights = {k: float(w) for k, w in weights.items() if float(w) > 0}
        self.method, self.eps = method, float(eps)
        self.params = dict(io_cfg["hyperelastic"])
        self.params["det_margin"] = float(io_cfg["det_margin"])
        if io_cfg["bending_eps"] is not None:
            self.params["bending_eps"] = float(io_cfg["bending_eps"])
        self.mm_per_unit = None
        if io_cfg["regularizer_space"] == "mm":
            self.mm_per_unit = torch.as_tensor(pair.fixed_grid.normalized_mm_scale(),
                                               dtype=torch.float32, device=pair.device)

    def terms(self, fn: PointMap, x: torch.Tensor, inverse_fn: PointMap | None = None,
              scale: float = 1.0) -> dict:
        if not self.weights:
            return {}
        weights = {k: w * scale for k, w in self.weights.items()}
        return regularizer_terms(fn, x, weights, self.method, self.eps, inverse_fn=inverse_fn,
                                 mm_per_unit=self.mm_per_unit, **self.params)


NEPHI_LR = {"scratch": {"lr": 3e-4, "latent_lr": 1e-2},
            "refine": {"lr": 1e-4, "latent_lr": 1e-3}}
"""Learning rates of the nephi mode when ``optim.lr`` / ``optim.latent_lr`` are null: from
identity fields and random codes, or refining a trained network's prediction (which starts close
to the optimum and is disturbed by large steps). Chosen on a synthetic lung CT pair, a 2-D hollow
Triangles & Circles pair and a deformed MNI152 T1 MRI (200 steps: 12.4 -> 0.43 mm, Dice 0.08 ->
0.61, 6.3 -> 1.57 mm, against 1.29 mm, 0.20, 2.29 mm with 1e-4 / 1e-3)."""


class NephiMode:
    """``nephi``: NePhi fields and latent codes (copies of ``init`` or fresh ones), eq. 8."""

    name = "nephi"

    def __init__(self, cfg: dict, pair: PairTensors, init: tuple | None, io_params: str):
        if io_params not in ("all", "latent"):
            raise ValueError(f"params must be 'all' or 'latent', got {io_params!r}")
        self.cfg, self.io_params, self.given = cfg, io_params, init is not None
        fields, latent = init if init is not None else initial_state(cfg, pair.ndim, pair.device)
        self.fields = copy.deepcopy(fields)
        self.latent = Latent(nn.Parameter(latent.global_.detach().clone()),
                             nn.Parameter(latent.local.detach().clone()))
        self.reg = _Regularization(cfg["loss"]["regularizers"], cfg["loss"]["jacobian"],
                                   cfg["loss"]["fd_eps"], cfg["io"], pair)
        self.offsets = stencil_offsets(cfg["io"]["lncc_window"], pair.fixed_grid.shape,
                                       device=pair.device)

    def learning_rate(self, key: str) -> float:
        """``optim.lr`` or ``optim.latent_lr``, or its automatic value (:data:`NEPHI_LR`)."""
        value = self.cfg["optim"][key]
        auto = NEPHI_LR["refine" if self.given else "scratch"][key]
        return float(auto if value is None else value)

    def stages(self) -> Iterator[Stage]:
        opt = self.cfg["optim"]
        groups = [{"params": [self.latent.global_, self.latent.local],
                   "lr": self.learning_rate("latent_lr")}]
        if self.io_params == "all":
            groups.append({"params": list(self.fields.parameters()),
                           "lr": self.learning_rate("lr")})
        else:
            self.fields.requires_grad_(False)
        yield Stage("nephi", groups, int(opt["steps"]))

    def phi_ab(self, x: torch.Tensor) -> torch.Tensor:
        return self.fields.phi_ab(x, self.latent)

    def phi_ba(self, x: torch.Tensor) -> torch.Tensor:
        return self.fields.phi_ba(x, self.latent)

    def terms(self, pair: PairTensors, generator: torch.Generator) -> dict:
        opt = self.cfg["optim"]
        terms = nephi_terms(self.fields, self.latent, pair, self.cfg["loss"], int(opt["points"]),
                            int(opt["reg_points"]), float(self.cfg["latent"]["sigma"]),
                            generator, similarity=self.cfg["io"]["similarity"],
                            offsets=self.offsets)
        if self.reg.weights:
            r = pair.sample_fixed_points(int(opt["reg_points"]), generator, in_mask=False)
            terms.update(self.reg.terms(self.fields.map_ab(self.latent), r))
        return terms

    def maps(self) -> tuple:
        fields, latent = frozen_copy(self.fields, self.latent)
        return (lambda x: fields.phi_ab(x, latent)), (lambda x: fields.phi_ba(x, latent))

    def info(self) -> dict:
        return {"inverse": "backward field network phi_BA, trained with GradICON",
                "optimized": "latent codes" if self.io_params == "latent"
                else "latent codes and field networks",
                "start": "given prediction" if self.given else "identity fields, random latent",
                "lr": self.learning_rate("lr"), "latent_lr": self.learning_rate("latent_lr")}


def tabulate(fn: PointMap, shape, device) -> PointMap:
    """fn (1, n, d) -> (1, n, d) tabulated on a grid of ``shape`` over [-1, 1]^d (voxel centres,
    align_corners) and linearly interpolated between: x -> x + D(x), with D the table of
    fn(p) - p (:func:`nephi.sampling.interpolate_linear`: twice differentiable in x, constant
    beyond the border). Exact at the grid points; its second derivatives vanish between them."""
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device) for n in shape]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
    disp = evaluate_chunked(fn, pts, 32768) - pts
    table = disp.reshape(*shape, len(shape)).movedim(-1, 0).unsqueeze(0)
    return lambda x: x + interpolate_linear(table.expand(x.shape[0], *table.shape[1:]), x)


class RefinementMode:
    """``inr`` and ``velocity``: phi_AB = B_AB o R_1 o ... o R_k on top of a given map B.

    During optimization a given map is used through a table (:func:`tabulate`) of at most
    ``io.given_map_grid`` points per axis of the IO grid, since evaluating and twice
    differentiating a NePhi network at every sampled point would cost several times more than
    the refinement itself; ``given_map_grid`` = 0 uses the network. The maps returned by
    :meth:`maps` (what is exported) always compose with the network itself.
    """

    def __init__(self, name: str, cfg: dict, pair: PairTensors, init: tuple | None):
        self.name, self.cfg, self.sec = name, cfg, cfg[name]
        self.ndim, self.device = pair.ndim, pair.device
        self.given = init is not None
        if init is not None:
            fields, latent = frozen_copy(*init)
            self.base_ab = lambda x: fields.phi_ab(x, latent)
            self.base_ba = lambda x: fields.phi_ba(x, latent)
        else:
            self.base_ab = self.base_ba = None
        self.train_ab, self.train_ba = self.base_ab, self.base_ba
        size = int(cfg["io"]["given_map_grid"])
        self.table_shape = tuple(min(n, size) for n in pair.fixed_grid.shape) if size else None
        self.refinements = nn.ModuleList()
        self.reg_scale = 1.0
        sec = self.sec
        self.reg = _Regularization(sec["regularizers"], sec["jacobian"], sec["fd_eps"],
                                   cfg["io"], pair)
        self.offsets = stencil_offsets(cfg["io"]["lncc_window"], pair.fixed_grid.shape,
                                       device=pair.device)

    def _refinement(self, seed: int) -> nn.Module:
        sec = self.sec
        net_cfg = CoordinateNetConfig.from_dict(sec["network"])
        if self.name == "inr":
            net = CoordinateNet(self.ndim, net_cfg, seed=seed)
            ref = DisplacementRefinement(net, sec["inverse_iterations"], sec["inverse_tolerance"])
        else:
            net = CoordinateNet(self.ndim, net_cfg, time_input=bool(sec["time_dependent"]),
                                seed=seed)
            ref = FlowRefinement(net, sec["solver"], sec["ode_steps"], sec["rtol"], sec["atol"],
                                 sec["adjoint"])
        return ref.to(self.device)

    def _tabulate_given_map(self) -> None:
        if self.base_ab is None or self.table_shape is None:
            return
        self.train_ab = tabulate(self.base_ab, self.table_shape, self.device)
        if "gradicon" in self.reg.weights:
            self.train_ba = tabulate(self.base_ba, self.table_shape, self.device)

    def stages(self) -> Iterator[Stage]:
        count = int(self.sec["stages"])
        if int(self.sec["steps"]) > 0:
            self._tabulate_given_map()
        for k in range(count):
            self.refinements.requires_grad_(False)
            ref = self._refinement(int(self.cfg["seed"]) + k)
            self.refinements.append(ref)
            self.reg_scale = float(self.sec["stage_reg_scale"]) ** k
            label = self.name if count == 1 else f"{self.name} {k + 1}/{count}"
            yield Stage(label, [{"params": list(ref.parameters()), "lr": float(self.sec["lr"])}],
                        int(self.sec["steps"]), k, count)
        self.refinements.requires_grad_(False)

    def _compose_ab(self, x: torch.Tensor, base: PointMap | None) -> torch.Tensor:
        for ref in reversed(self.refinements):
            x = ref(x)
        return x if base is None else base(x)

    def _compose_ba(self, y: torch.Tensor, base: PointMap | None) -> torch.Tensor:
        if base is not None:
            y = base(y)
        for ref in self.refinements:
            y = ref.inverse(y)
        return y

    def phi_ab(self, x: torch.Tensor) -> torch.Tensor:
        """B_AB(R_1(...R_k(x))), fixed -> moving frame points (B, N, d)."""
        return self._compose_ab(x, self.base_ab)

    def phi_ba(self, y: torch.Tensor) -> torch.Tensor:
        """R_k^-1(...R_1^-1(B_BA(y))), moving -> fixed frame points (B, N, d)."""
        return self._compose_ba(y, self.base_ba)

    def terms(self, pair: PairTensors, generator: torch.Generator) -> dict:
        sec = self.sec

        def train_ab(x):
            return self._compose_ab(x, self.train_ab)

        def train_ba(y):
            return self._compose_ba(y, self.train_ba)

        x = pair.sample_fixed_points(int(sec["points"]), generator)
        terms = similarity_terms("sim_ab", pair.moving_at, pair.fixed_at, train_ab, x,
                                 self.cfg["io"]["similarity"], self.offsets)
        if self.reg.weights:
            r = pair.sample_fixed_points(int(sec["reg_points"]), generator,
                                         in_mask=bool(sec["reg_in_mask"]))
            terms.update(self.reg.terms(train_ab, r, inverse_fn=train_ba, scale=self.reg_scale))
        return terms

    def maps(self) -> tuple:
        self.refinements.requires_grad_(False)
        return self.phi_ab, self.phi_ba

    def info(self) -> dict:
        sec = self.sec
        if self.name == "inr":
            inverse = (f"fixed-point inversion of each refinement x <- y - u(x) (at most "
                       f"{sec['inverse_iterations']} iterations, tolerance "
                       f"{sec['inverse_tolerance']:g} frame units)")
        else:
            how = (f"{sec['ode_steps']} fixed steps" if sec["solver"] in FIXED_STEP_SOLVERS
                   else f"rtol {sec['rtol']:g}, atol {sec['atol']:g}")
            inverse = (f"backward integration of the velocity field from t=1 to 0 "
                       f"({sec['solver']}, {how})")
        if self.given:
            inverse += ", composed after the given map's phi_BA"
        table = (f"tabulated on {'x'.join(map(str, self.table_shape))} points during IO"
                 if self.given and self.table_shape else "the network itself")
        return {"inverse": inverse,
                "composition": "phi_AB = given o R_1 o ... o R_k" if self.given
                else "phi_AB = R_1 o ... o R_k",
                "start": "given prediction" if self.given else "identity",
                "given_map_in_io": table if self.given else None,
                "parameters": int(sum(p.numel() for p in self.refinements.parameters()))}


def build_mode(cfg: dict, pair: PairTensors, init: tuple | None = None,
               io_params: str = "all"):
    """The mode object of ``cfg['io']['mode']`` for ``pair``, starting from ``init``.

    ``init``: optional (fields, latent), a prediction in the frame of ``pair``; it is copied.
    ``io_params`` (nephi mode): ``'all'`` (fields and latent codes) or ``'latent'``.
    """
    mode = cfg["io"]["mode"]
    if mode == "nephi":
        return NephiMode(cfg, pair, init, io_params)
    if mode in ("inr", "velocity"):
        return RefinementMode(mode, cfg, pair, init)
    raise ValueError(f"unknown IO mode {mode!r}; choose one of {', '.join(MODES)}")


__all__ = ["MODES", "Stage", "build_mode", "option_key", "io_steps", "validate_io_config",
           "initial_state", "frozen_copy", "fixed_point_inverse", "DisplacementRefinement",
           "FlowRefinement", "NephiMode", "RefinementMode"]
