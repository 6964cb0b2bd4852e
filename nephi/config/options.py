"""The one table of command-line options that set config keys (``nephi-infer``).

``--io-steps``, ``--points``, ``--reg-points`` and ``--lr`` set keys of the ACTIVE instance-
optimization mode: ``optim.*`` for ``nephi``, ``inr.*`` / ``velocity.*`` for the others. The
remaining options set one fixed key each. Error messages name the option a value came from
(:func:`key_names`), else the config key.
"""

from __future__ import annotations

from nephi.config.loader import set_dotted
from nephi.errors import NephiInputError
from nephi.objectives.similarity import SIMILARITIES


__all__ = ["MODE_OPTIONS", "RUN_OPTIONS", "mode_section", "option_key", "io_steps",
           "option_keys", "key_names", "active_mode", "apply_options"]

MODE_OPTIONS = {"io_steps": ("--io-steps", "steps"), "points": ("--points", "points"),
                "reg_points": ("--reg-points", "reg_points"), "lr": ("--lr", "lr")}
"""argparse attribute -> (flag, key inside the active mode's section)."""

RUN_OPTIONS = {"seed": ("--seed", "seed"), "device": ("--device", "device"),
               "precision": ("--precision", "precision"),
               "qc": ("--qc", "output.qc"), "output_format": ("--output-format", "output.format"),
               "log_jacobian": ("--log-jacobian", "output.log_jacobian"),
               "align": ("--align", "align.mode"), "align_only": ("--align-only", "align.only")}
"""argparse attribute -> (flag, dotted key), the same for every mode."""


def mode_section(mode: str) -> str:
    """The config section of an IO mode's optimization settings: ``optim`` for nephi."""
    return "optim" if mode == "nephi" else mode


def option_key(mode: str, option: str) -> str:
    """Dotted key of ``option`` (``steps``, ``points``, ``reg_points``, ``lr``) for ``mode``."""
    return f"{mode_section(mode)}.{option}"


def io_steps(cfg: dict) -> int:
    """Optimization steps per stage of the active mode (``optim.steps`` or ``<mode>.steps``)."""
    return int(cfg[mode_section(cfg["io"]["mode"])]["steps"])


def option_keys(mode: str) -> dict:
    """argparse attribute -> (flag, dotted key) of every option, for ``mode``."""
    table = {attr: (flag, option_key(mode, key)) for attr, (flag, key) in MODE_OPTIONS.items()}
    table.update(RUN_OPTIONS)
    return table


def key_names(mode: str, given=None) -> dict:
    """Dotted key -> the flag that sets it, for the options in ``given`` (argparse attributes;
    None: every option), so a bad value is reported under the name the user typed."""
    return {key: flag for attr, (flag, key) in option_keys(mode).items()
            if given is None or attr in given}


def active_mode(cfg: dict) -> str:
    """The IO mode whose section the mode options set (``nephi`` unless inr or velocity)."""
    io = cfg.get("io")
    mode = io.get("mode", "nephi") if isinstance(io, dict) else "nephi"
    return mode if mode in ("inr", "velocity") else "nephi"


def apply_options(cfg: dict, options: dict) -> dict:
    """``cfg`` with the options of the table set (``io_mode`` first, as it decides where the
    mode options go); options whose value is None are left alone. Errors name the flag."""
    known = {"io_mode", "similarity", *MODE_OPTIONS, *RUN_OPTIONS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise NephiInputError(f"unknown option(s) {unknown}; known: {sorted(known)}")
    if options.get("io_mode") is not None:
        cfg = set_dotted(cfg, "io.mode", options["io_mode"], source="--io-mode")
    if options.get("similarity") is not None:
        name = options["similarity"]
        if name not in SIMILARITIES:
            raise NephiInputError(f"--similarity: must be one of {sorted(SIMILARITIES)}, got "
                                  f"{name!r}")
        weights = {k: 1.0 if k == name else 0.0 for k in SIMILARITIES}
        cfg = set_dotted(cfg, "io.similarity", weights, source="--similarity")
        # local NCC is for the deformable stage; a global fit keeps the global NCC (windows in
        # flat tissue led it away from the anatomy: tests/integration/test_real_scans.py)
        cfg = set_dotted(cfg, "align.similarity", "ncc" if name == "lncc" else name,
                         source="--similarity")
    for attr, (flag, key) in option_keys(active_mode(cfg)).items():
        if options.get(attr) is not None:
            cfg = set_dotted(cfg, key, options[attr], source=flag)
    return cfg
