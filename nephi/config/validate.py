"""Config validation: every check of a resolved config, in one place, run once before any work.

A failed check raises :class:`~nephi.errors.NephiInputError` whose message names the option the
value came from (``--points``) or else the config key (``config key inr.points``), and says what
is wrong. The allowed values of every enumerated key are stated here.

* :func:`validate_pairwise`: ``nephi-infer`` / :func:`nephi.register` configs
  (``nephi/config/defaults/pairwise.yaml``), including the ``io`` section and the active
  instance-optimization mode's section (:func:`validate_io`);
* :func:`validate_training`: ``train/train.py`` configs (``nephi/config/defaults/train.yaml``).
"""

from __future__ import annotations

import math

from nephi.config.loader import get
from nephi.config.options import mode_section
from nephi.errors import NephiInputError
from nephi.models.coordinate import CoordinateNetConfig
from nephi.models.fields import PRECISIONS
from nephi.objectives.regularizers import HYPERELASTIC_DEFAULTS, REGULARIZERS
from nephi.objectives.similarity import SIMILARITIES, stencil_offsets
from nephi.transforms.jacobian import METHODS as DERIVATIVE_METHODS
from nephi.transforms.jacobian import NEPHI_METHODS


__all__ = ["MODES", "REGULARIZER_SPACES", "FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "SCHEDULES",
           "VAL_METRICS", "DATA_BUILDS", "MIXED_PRECISION", "OUTPUT_FORMATS", "ALIGN_MODES", "ALIGN_INITS", "require_positive", "require_finite",
           "validate_io", "validate_pairwise", "validate_training", "validate_augment"]

MODES = ("nephi", "inr", "velocity")
REGULARIZER_SPACES = ("normalized", "mm")
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4")
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
SCHEDULES = ("constant", "cosine", "linear")
VAL_METRICS = ("landmark_error", "dice", "loss")
DATA_BUILDS = ("none", "synthetic-lung", "triangles-circles")
MIXED_PRECISION = ("no", "fp16", "bf16")
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
FIELD_GRIDS = ("auto", "voxels", "network")
ALIGN_MODES = ("none", "rigid", "affine")

ALIGN_INITS = ("com", "geometry", "none")


def _fail(key: str, why: str):
    raise NephiInputError(f"config key {key}: {why}")


def _one_of(key: str, value, allowed, name: str | None = None) -> None:
    if value not in allowed:
        raise NephiInputError(f"{name or f'config key {key}'}: {value!r} is not one of "
                              f"{', '.join(allowed)}")


def require_positive(cfg: dict, keys: list, option_names: dict | None = None,
                     allow_null: bool = False) -> None:
    """Raise NephiInputError naming the option (or key) whose value is not > 0 (or null, when
    ``allow_null``: an automatic default)."""
    option_names = option_names or {}
    for key in keys:
        value = get(cfg, key)
        if allow_null and value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            name = option_names.get(key, f"config key {key}")
            raise NephiInputError(f"{name}: must be positive, got {value!r}")


def require_finite(cfg: dict, option_names: dict | None = None, prefix: str = "") -> None:
    """Every number of the config (also inside lists) is finite."""
    option_names = option_names or {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            require_finite(value, option_names, dotted + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise NephiInputError(f"{option_names.get(dotted, f'config key {dotted}')}: must be a "
                                  f"finite number, got {value!r}")
        elif isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v)
                                             for v in value):
            raise NephiInputError(f"config key {dotted}: must hold finite numbers, got {value!r}")


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


def validate_io(cfg: dict) -> None:
    """Check the ``io`` section and the active mode's section; NephiInputError names the key."""
    io = cfg["io"]
    mode = io["mode"]
    _one_of("io.mode", mode, MODES, "--io-mode / config key io.mode")
    _check_weights("io.similarity", io["similarity"], SIMILARITIES)
    if not any(float(w) > 0 for w in io["similarity"].values()):
        _fail("io.similarity", "at least one weight must be > 0")
    try:
        stencil_offsets(io["lncc_window"], (3,))
    except ValueError as exc:
        _fail("io.lncc_window", str(exc))
    _one_of("io.regularizer_space", io["regularizer_space"], REGULARIZER_SPACES)
    _one_of("io.lr_schedule", io["lr_schedule"], ("constant", "cosine"))
    if not isinstance(io["pyramid"], list):
        _fail("io.pyramid", f"must be a list of {{sigma, fraction}} levels, got {io['pyramid']!r}")
    for k, level in enumerate(io["pyramid"]):
        if not isinstance(level, dict) or set(level) != {"sigma", "fraction"}:
            _fail(f"io.pyramid[{k}]", f"must be {{sigma: S, fraction: F}}, got {level!r}")
        _check_positive(f"io.pyramid[{k}].sigma", level["sigma"], zero=True)
        _check_positive(f"io.pyramid[{k}].fraction", level["fraction"])
    if io["pyramid"] and io["mode"] != "nephi":
        _fail("io.pyramid", f"is for the nephi mode; io.mode is {io['mode']!r}")
    for name in HYPERELASTIC_DEFAULTS:
        _check_positive(f"io.hyperelastic.{name}", io["hyperelastic"][name], zero=True)
    _check_positive("io.det_margin", io["det_margin"], zero=True)
    _check_positive("io.tolerance", io["tolerance"], zero=True)
    _check_positive("io.window", io["window"], integer=True)
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
    _one_of(f"{mode}.jacobian", sec["jacobian"], DERIVATIVE_METHODS)
    _check_weights(f"{mode}.regularizers", sec["regularizers"], REGULARIZERS)
    try:
        CoordinateNetConfig.from_dict(sec["network"], f"config key {mode}.network")
    except NephiInputError:
        raise
    except (TypeError, ValueError) as exc:
        _fail(f"{mode}.network", str(exc))
    if mode == "inr":
        _check_positive("inr.inverse_iterations", sec["inverse_iterations"], integer=True)
        _check_positive("inr.inverse_tolerance", sec["inverse_tolerance"])
    else:
        _one_of("velocity.solver", sec["solver"], FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS)
        _check_positive("velocity.ode_steps", sec["ode_steps"], integer=True)
        for key in ("rtol", "atol"):
            _check_positive(f"velocity.{key}", sec[key])
        if sec["adjoint"] and sec["jacobian"] in ("autograd", "forward") and any(
                float(w) > 0 for w in sec["regularizers"].values()):
            _fail("velocity.jacobian", "with velocity.adjoint the regularizers need finite "
                                       "differences (fd or fd-central): the adjoint method "
                                       "has no double backward")


def validate_align(cfg: dict, option_names: dict | None = None) -> None:
    """Check the ``align`` section (global alignment)."""
    names = option_names or {}
    a = cfg["align"]
    _one_of("align.mode", a["mode"], ALIGN_MODES, names.get("align.mode"))
    _one_of("align.init", a["init"], ALIGN_INITS)
    _one_of("align.similarity", a["similarity"], tuple(SIMILARITIES), names.get("align.similarity"))
    schedules = ["steps"] + ([] if a["rigid_steps"] is None else ["rigid_steps"])
    for key in ["sigmas", *schedules]:
        if not isinstance(a[key], list) or not a[key]:
            _fail(f"align.{key}", f"must be a non-empty list, got {a[key]!r}")
    for key in schedules:
        if len(a["sigmas"]) != len(a[key]):
            _fail(f"align.{key}", f"needs one entry per pyramid level of align.sigmas "
                                  f"({len(a['sigmas'])}), got {len(a[key])}")
        for k, steps in enumerate(a[key]):
            _check_positive(f"align.{key}[{k}]", steps, integer=True, zero=True)
    for k, sigma in enumerate(a["sigmas"]):
        _check_positive(f"align.sigmas[{k}]", sigma, zero=True)
    _check_positive("align.points", a["points"], integer=True)
    _check_positive("align.window", a["window"], integer=True)
    _check_positive("align.lr", a["lr"])
    _check_positive("align.tolerance", a["tolerance"], zero=True)
    _check_positive("align.significance", a["significance"], zero=True)


def validate_pairwise(cfg: dict, option_names: dict | None = None, min_steps: int = 0) -> None:
    """Check a resolved pairwise config; NephiInputError names the option or key.

    ``option_names``: dotted key -> the command-line flag that set it
    (:func:`nephi.config.options.key_names`), so messages use the user's words. ``min_steps``:
    the fewest IO steps of the active mode allowed (1 without a trained network: 0 steps would
    return the identity map).
    """
    mode = cfg["io"]["mode"]
    _one_of("io.mode", mode, MODES, "--io-mode / config key io.mode")
    names = option_names or {}
    require_finite(cfg, names)
    steps_key = f"{mode_section(mode)}.steps"
    steps = get(cfg, steps_key)
    if cfg["align"]["only"] is True:
        min_steps = 0  # a pure linear registration: no instance optimization
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < min_steps:
        why = (" (0 steps would skip optimization and return the identity map)"
               if steps == 0 and min_steps == 1 else "")
        raise NephiInputError(f"{names.get(steps_key, f'config key {steps_key}')}: must be an "
                              f"integer >= {min_steps}, got {steps!r}{why}")
    validate_align(cfg, names)
    _one_of("precision", cfg["precision"], ("auto", *PRECISIONS), names.get("precision"))
    section = mode_section(mode)
    require_positive(cfg, [f"{section}.points", f"{section}.reg_points"], names)
    require_positive(cfg, [f"{section}.lr"], names, allow_null=mode == "nephi")
    validate_io(cfg)
    require_positive(cfg, ["optim.points", "optim.reg_points", "latent.sigma", "output.chunk",
                           "loss.fd_eps"], names)
    require_positive(cfg, ["optim.lr", "optim.latent_lr"], names, allow_null=True)
    _check_positive("optim.steps", cfg["optim"]["steps"], integer=True, zero=True)
    if cfg["output"]["format"] is not None:
        _one_of("output.format", cfg["output"]["format"], OUTPUT_FORMATS, "--output-format")
    _one_of("output.field_grid", cfg["output"]["field_grid"], FIELD_GRIDS)
    _one_of("loss.jacobian", cfg["loss"]["jacobian"], NEPHI_METHODS)
    for key in ("lambda_reg", "lambda_prior"):
        if cfg["loss"][key] < 0:
            _fail(f"loss.{key}", "must be >= 0")


def _check_fraction(key: str, value, closed: bool) -> None:
    """A number in [0, 1] (``closed``) or [0, 1)."""
    _check_positive(key, value, zero=True)
    if value > 1 or (value == 1 and not closed):
        _fail(key, f"must be {'<= 1' if closed else '< 1'}, got {value!r}")


def validate_augment(aug: dict) -> None:
    """Check the ``augment`` section of a training config (kinds, ranges, flip axes)."""
    for kind in ("affine", "deform", "intensity", "flip"):
        _check_fraction(f"augment.{kind}.probability", aug[kind]["probability"], closed=True)
    for key in ("rotation_deg", "translation_mm"):
        _check_positive(f"augment.affine.{key}", aug["affine"][key], zero=True)
    for key in ("scaling", "shear"):
        _check_fraction(f"augment.affine.{key}", aug["affine"][key], closed=False)
    if aug["affine"]["rotation_deg"] > 180:
        _fail("augment.affine.rotation_deg",
              f"must be <= 180, got {aug['affine']['rotation_deg']!r}")
    _check_positive("augment.deform.max_mm", aug["deform"]["max_mm"], zero=True)
    _check_positive("augment.deform.scale_mm", aug["deform"]["scale_mm"])
    for key in ("gamma", "bias", "noise"):
        _check_positive(f"augment.intensity.{key}", aug["intensity"][key], zero=True)
    _check_positive("augment.intensity.bias_scale_mm", aug["intensity"]["bias_scale_mm"])
    _check_fraction("augment.intensity.contrast", aug["intensity"]["contrast"], closed=False)
    axes = aug["flip"]["axes"]
    if (not isinstance(axes, list) or len(set(axes)) != len(axes)
            or any(type(a) is not int or a not in (0, 1, 2) for a in axes)):
        _fail("augment.flip.axes", f"must be a list of distinct array axes 0, 1, 2, got {axes!r}")
    if aug["flip"]["probability"] > 0 and not axes:
        _fail("augment.flip.axes", "name the axes that may be flipped (augment.flip.probability "
                                   "is > 0)")


def validate_training(cfg: dict) -> None:
    """Check a resolved training config; NephiInputError names the key."""
    require_finite(cfg)
    require_positive(cfg, ["train.steps", "train.batch_size", "train.grad_accum", "train.lr",
                           "train.points", "train.reg_points", "train.log_every", "val.every",
                           "val.points", "val.chunk", "checkpoint.every", "checkpoint.keep_last",
                           "latent.sigma", "loss.fd_eps", "model.latent_channels",
                           "model.hidden", "model.layers", "model.local_target",
                           "model.passes"])
    t = cfg["train"]
    _one_of("train.schedule", t["schedule"], SCHEDULES)
    _one_of("train.mixed_precision", t["mixed_precision"], MIXED_PRECISION)
    _one_of("val.metric", cfg["val"]["metric"], ("auto", *VAL_METRICS))
    _one_of("loss.jacobian", cfg["loss"]["jacobian"], NEPHI_METHODS)
    _check_weights("loss.similarity", cfg["loss"]["similarity"], SIMILARITIES)
    if not any(float(w) > 0 for w in cfg["loss"]["similarity"].values()):
        _fail("loss.similarity", "at least one weight must be > 0")
    try:
        stencil_offsets(cfg["loss"]["lncc_window"], (3,))
    except ValueError as exc:
        _fail("loss.lncc_window", str(exc))
    _one_of("data.build", cfg["data"]["build"], DATA_BUILDS)
    if not cfg["model"]["encoder_channels"]:
        _fail("model.encoder_channels", "needs at least one entry")
    validate_augment(cfg["augment"])
