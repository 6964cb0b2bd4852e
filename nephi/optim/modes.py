"""Instance-optimization (IO) modes: what IO optimizes, and the point maps it yields.

One engine, :func:`nephi.optim.engine.instance_optimize`, runs every mode: it builds the mode
(:func:`build_mode`), runs Adam over the mode's stages on the terms the mode returns, and asks
the mode for the final point maps ``(phi_AB, phi_BA)``. Directions as everywhere in nephi
(A = moving, B = fixed): phi_AB maps FIXED points to MOVING points (warped = I_A(phi_AB(x))),
phi_BA maps moving points to fixed points. All points are in the frame of the pair IO sees
(the fixed grid's normalized coordinates [-1, 1]^d, or the network grid's with a checkpoint;
see :func:`nephi.pipeline.pairwise.register`), as (B, N, d) tensors.

Modes (config key ``io.mode``, ``nephi-infer --io-mode``):

* ``nephi``: NePhi's field networks and latent codes (copies), the loss of eq. 8 (similarity
  both ways, GradICON, latent prior) plus any extra regularizer of ``loss.regularizers`` on
  phi_AB. phi_BA is the backward field network.
* ``inr``: an IDIR-style coordinate network u (:class:`nephi.models.coordinate.CoordinateNet`, SIREN by
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
sum ``io.similarity`` of :func:`nephi.objectives.similarity.similarity_terms`. ``inr`` and ``velocity`` use
the forward direction only, as IDIR and NIR do.

Regularizers (every mode): ``<section>.regularizers``, name -> weight over
:data:`nephi.objectives.regularizers.REGULARIZERS` (terms of weight 0 are skipped), applied to phi_AB (the
whole map, prediction included) at ``reg_points`` points, with first derivatives by
``jacobian`` (autograd by default; ``fd``/``fd-central`` finite differences of step ``fd_eps``
frame units as an option). ``io.regularizer_space`` says which coordinates the weights refer
to: ``normalized`` (default; derivatives in frame units, i.e. each axis scaled to [-1, 1]) or
``mm`` (derivatives converted with the frame's mm per unit s_k = spacing_k (N_k - 1) / 2, see
:mod:`nephi.objectives.regularizers`; for an isotropic s the Jacobian terms keep their value and a bending
weight w_norm corresponds to w_mm = w_norm s^2). GradICON on phi_AB o phi_BA is available in
every mode but only informative in ``nephi``: in ``inr`` and ``velocity`` phi_BA is (up to
tolerance or integration error) the exact inverse, so the term is near zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import nn

from nephi.config.validate import FIXED_STEP_SOLVERS, MODES
from nephi.geometry.pair import PairTensors
from nephi.models.coordinate import CoordinateNet, CoordinateNetConfig
from nephi.models.fields import FieldConfig, Latent, NephiFields, resolve_precision
from nephi.objectives.nephi_loss import nephi_terms
from nephi.objectives.regularizers import regularizer_terms
from nephi.objectives.similarity import similarity_terms, stencil_offsets
from nephi.optim.refinements import DisplacementRefinement, FlowRefinement
from nephi.records import from_mapping
from nephi.transforms.base import PointMap
from nephi.transforms.dense import tabulate


__all__ = ["IOMode", "Stage", "NEPHI_LR", "NephiMode", "RefinementMode", "build_mode",
           "initial_state", "frozen_copy"]


@dataclass
class Stage:
    """One optimization phase: Adam ``groups`` (parameter groups with lr) for ``steps`` steps;
    stage ``index`` (0-based) of ``count``."""

    label: str
    groups: list
    steps: int
    index: int = 0
    count: int = 1
    pair: PairTensors | None = None  # the pair this stage sees (a pyramid level), if not the given


class IOMode(Protocol):
    """What the engine (:func:`nephi.optim.engine.instance_optimize`) needs of a mode.

    The engine calls :meth:`stages` and, for each yielded :class:`Stage`, runs Adam on its
    parameter groups for ``stage.steps`` steps, each step minimizing
    :func:`nephi.objectives.terms.total` of :meth:`terms`; then it asks :meth:`maps` for the
    result and :meth:`info` for the summary. A mode never changes what it was given
    (``init``): it optimizes copies.
    """

    name: str
    """The mode's name (``io.mode``)."""

    def stages(self) -> Iterator[Stage]:
        """The optimization phases, in order (a cascade yields one per refinement)."""
        ...

    def terms(self, pair: PairTensors, generator: torch.Generator) -> dict:
        """The loss terms (name -> :class:`~nephi.objectives.terms.Term`) of one step, points
        drawn with ``generator``."""
        ...

    def maps(self) -> tuple:
        """(phi_AB, phi_BA): point maps (B, N, d) -> (B, N, d) of the pair's frame, fixed ->
        moving and moving -> fixed, with no gradient reaching any parameter."""
        ...

    def info(self) -> dict:
        """How the maps were made (inverse, composition, start), for summary.json."""
        ...


def initial_state(cfg: dict, ndim: int, device) -> tuple:
    """Fresh NePhi fields (identity maps) and random latent codes, seeded by ``cfg['seed']``."""
    torch.manual_seed(int(cfg["seed"]))
    fcfg = from_mapping(FieldConfig, {**cfg["model"], "ndim": ndim}, "config key model")
    fields = NephiFields(fcfg, seed=int(cfg["seed"])).to(device)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    latent = Latent.random(1, fcfg, float(cfg["latent"]["sigma"]), generator=gen, device=device)
    return fields, latent


def frozen_copy(fields: NephiFields, latent: Latent) -> tuple:
    """Copies of (fields, latent) that no optimizer can reach: parameters without gradients."""
    fields = copy.deepcopy(fields)
    fields.requires_grad_(False)
    return fields, latent.detach_clone()


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


NEPHI_LR = {"scratch": {"lr": 6e-4, "latent_lr": 2e-2},
            "refine": {"lr": 1e-4, "latent_lr": 1e-3}}
"""Learning rates of the nephi mode when ``optim.lr`` / ``optim.latent_lr`` are null: from
identity fields and random codes, or refining a trained network's prediction (which starts close
to the optimum and is disturbed by large steps). Chosen on a synthetic lung CT pair, a 2-D hollow
Triangles & Circles pair and a deformed MNI152 T1 MRI (200 steps: 12.4 -> 0.43 mm, Dice 0.08 ->
0.61, 6.3 -> 1.57 mm, against 1.29 mm, 0.20, 2.29 mm with 1e-4 / 1e-3)."""


class NephiMode(IOMode):
    """``nephi``: NePhi fields and latent codes (copies of ``init`` or fresh ones), eq. 8."""

    name = "nephi"

    def __init__(self, cfg: dict, pair: PairTensors, init: tuple | None, io_params: str):
        if io_params not in ("all", "latent"):
            raise ValueError(f"params must be 'all' or 'latent', got {io_params!r}")
        self.cfg, self.io_params, self.given = cfg, io_params, init is not None
        self.pair = pair
        fields, latent = init if init is not None else initial_state(cfg, pair.ndim, pair.device)
        self.fields = copy.deepcopy(fields).set_precision(
            resolve_precision(cfg["precision"], pair.device))
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
        """One stage, or one per level of ``io.pyramid`` (coarse to fine, each its own Adam)."""
        opt = self.cfg["optim"]

        def groups():
            out = [{"params": [self.latent.global_, self.latent.local],
                    "lr": self.learning_rate("latent_lr")}]
            if self.io_params == "all":
                out.append({"params": list(self.fields.parameters()),
                            "lr": self.learning_rate("lr")})
            return out

        if self.io_params != "all":
            self.fields.requires_grad_(False)
        levels = self.cfg["io"]["pyramid"]
        if not levels:
            yield Stage("nephi", groups(), int(opt["steps"]))
            return
        total = int(opt["steps"])
        for k, level in enumerate(levels):
            steps = int(round(total * float(level["fraction"])))
            yield Stage(f"nephi level {k + 1}/{len(levels)}", groups(), steps, k, len(levels),
                        pair=self.pair.smoothed(float(level["sigma"])))

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
        return fields.map_ab(latent), fields.map_ba(latent)

    def info(self) -> dict:
        return {"inverse": "backward field network phi_BA, trained with GradICON",
                "optimized": "latent codes" if self.io_params == "latent"
                else "latent codes and field networks",
                "start": "given prediction" if self.given else "identity fields, random latent",
                "lr": self.learning_rate("lr"), "latent_lr": self.learning_rate("latent_lr"),
                "precision": self.fields.precision}


class RefinementMode(IOMode):
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
                                 self.cfg["io"]["similarity"], self.offsets,
                                 source_mask_at=pair.moving_mask_at)
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
               io_params: str = "all") -> IOMode:
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
