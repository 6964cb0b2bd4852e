"""``nephi-infer``: register a moving image to a fixed image (thin entry point; logic in nephi)."""

from __future__ import annotations

import argparse
import math
import sys

from nephi.cli import run_cli
from nephi.errors import NephiInputError
from nephi.config import (load_defaults, merge, parse_override, read_yaml, require_positive,
                          set_dotted)


def build_parser() -> argparse.ArgumentParser:
    from nephi.cli import OneLineParser

    p = OneLineParser(
        prog="nephi-infer",
        description="Register MOVING onto FIXED with NePhi. Outputs in --out: warped.nii.gz, "
                    "warp.nii.gz (ITK displacement field, fixed grid, LPS mm: fixed point p maps "
                    "to moving point p + d(p)), inverse_warp.nii.gz, jacobian.nii.gz, "
                    "summary.json.")
    p.add_argument("--pair", nargs=2, metavar=("MOVING", "FIXED"),
                   help="moving image A and fixed image B (NIfTI, 2-D or 3-D)")
    p.add_argument("--pairs", metavar="PAIRS.csv",
                   help="with --checkpoint: register every row of a CSV (columns moving,fixed; "
                        "optional name, moving_mask, fixed_mask, moving_points, fixed_points) "
                        "into --out/<name or pair_NNNN>/, skipping pairs already done")
    p.add_argument("--out", required=True, metavar="DIR", help="result folder")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="trained network (train/train.py checkpoint): feed-forward prediction, "
                        "then --io-steps of instance optimization from it (default 0)")
    p.add_argument("--io-params", choices=["latent", "all"],
                   help="with --checkpoint: what IO optimizes, the latent codes or the latent "
                        "codes and the field networks (default latent)")
    p.add_argument("--moving-mask", metavar="MOVING_MASK",
                   help="with --checkpoint: moving-image mask, needed when the network was "
                        "trained on masked images")
    p.add_argument("--io-mode", choices=["nephi", "inr", "velocity"],
                   help="what instance optimization optimizes: nephi (NePhi fields and latent "
                        "codes, GradICON; default), inr (IDIR-style displacement network, "
                        "hyperelastic regularizer, inverse by fixed-point iteration) or velocity "
                        "(neural velocity field integrated with torchdiffeq, inverse by backward "
                        "integration); with --checkpoint, inr and velocity refine the prediction")
    p.add_argument("--io-steps", type=int,
                   help="instance-optimization steps (default: optim.steps = 500 for nephi, "
                        "inr.steps / velocity.steps for the other modes; 0 with --checkpoint "
                        "and --io-mode nephi)")
    p.add_argument("--mask", metavar="FIXED_MASK", help="fixed-image mask: similarity points "
                   "are drawn inside it; metrics are reported inside it")
    p.add_argument("--points", type=int, help="similarity points per direction and step")
    p.add_argument("--reg-points", type=int, help="regularizer (GradICON for nephi) points "
                   "per step")
    p.add_argument("--lr", type=float, help="learning rate of the optimized networks (nephi: "
                   "the field networks; inr, velocity: the coordinate network)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--config", metavar="YAML", help="config file overriding the defaults")
    p.add_argument("--landmarks", metavar="FIXED_POINTS.csv",
                   help="fixed-space points (CSV x,y,z, RAS mm) to map into moving space")
    p.add_argument("--moving-landmarks", metavar="MOVING_POINTS.csv",
                   help="corresponding moving points: landmark error goes into summary.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set loss.lambda_reg=5 (repeatable)")
    p.add_argument("--qc", action="store_true", default=None,
                   help="also write qc_overview.png into --out: quick-look slices (fixed, moving, "
                        "warped, overlays, deformed grid, Jacobian); same as --set output.qc=true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_config(args, base: dict | None = None) -> dict:
    """``base`` (default: the pairwise defaults) <- --config <- --set <- options."""
    cfg = load_defaults("pairwise") if base is None else base
    if args.config:
        cfg = merge(cfg, _read_config(args.config), source=f"config {args.config}")
    for text in args.set:
        key, value = parse_override(text)
        cfg = set_dotted(cfg, key, value, source=f"--set {text}")
    if args.io_mode is not None:
        cfg = set_dotted(cfg, "io.mode", args.io_mode, source="--io-mode")
    mode = _mode(cfg)
    options = {attr: _mode_key(mode, key) for attr, key in OPTION_KEYS.items()}
    options.update({"seed": "seed", "device": "device", "qc": "output.qc"})
    for attr, key in options.items():
        value = getattr(args, attr)
        if value is not None:
            cfg = set_dotted(cfg, key, value, source=f"--{attr.replace('_', '-')}")
    return cfg


def _read_config(path: str) -> dict:
    """read_yaml, with unreadable files (binary, no permission) as one-line input errors."""
    try:
        return read_yaml(path)
    except UnicodeDecodeError:
        raise NephiInputError(f"config {path}: not a text (UTF-8) YAML file") from None
    except OSError as exc:
        raise NephiInputError(f"config {path}: cannot be read ({exc.strerror or exc})") from None


OPTION_KEYS = {"io_steps": "steps", "points": "points", "reg_points": "reg_points", "lr": "lr"}
"""Options that set a key of the active IO mode's section (see :func:`_mode_key`)."""


def _mode(cfg: dict) -> str:
    io = cfg.get("io")
    return io.get("mode", "nephi") if isinstance(io, dict) else "nephi"


def _mode_key(mode: str, option: str) -> str:
    """optim.<option> for the nephi mode, <mode>.<option> for inr and velocity."""
    from nephi.io_modes import option_key

    return option_key(mode if mode in ("inr", "velocity") else "nephi", option)


def _option_name(args, key: str, mode: str = "nephi") -> str:
    """The option a config value came from: ``--io-steps`` if given, else the config key."""
    for attr, option in OPTION_KEYS.items():
        if key == _mode_key(mode, option) and getattr(args, attr, None) is not None:
            return "--" + attr.replace("_", "-")
    return f"config key {key}"


def check_options(args, cfg: dict) -> None:
    """Checks on the resolved config beyond validate_config, done before any file is read.

    Every number must be finite; --io-steps must be >= 1. Zero steps (no instance optimization)
    is only meaningful when a trained checkpoint supplies a prediction, so it is accepted only
    together with ``--checkpoint``; without one it would return the identity map. The steps,
    points, regularizer points and learning rate checked are those of the active IO mode
    (``optim.*`` for nephi, ``inr.*`` / ``velocity.*``).
    """
    mode = _mode(cfg)

    def walk(node, prefix=""):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            elif isinstance(value, float) and not math.isfinite(value):
                raise NephiInputError(f"{_option_name(args, dotted, mode)}: must be a finite "
                                      f"number, "
                                      f"got {value!r}")
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, float) and not math.isfinite(item):
                        raise NephiInputError(f"config key {dotted}: must hold finite numbers, "
                                              f"got {value!r}")

    walk(cfg)
    if mode not in ("nephi", "inr", "velocity"):
        raise NephiInputError(f"config key io.mode: {mode!r} is not one of nephi, inr, velocity")
    steps_key = _mode_key(mode, "steps")
    steps = cfg[steps_key.split(".")[0]]["steps"]
    minimum = 0 if getattr(args, "checkpoint", None) else 1
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < minimum:
        why = (" (0 steps would skip optimization and return the identity map)"
               if steps == 0 and minimum == 1 else "")
        raise NephiInputError(f"{_option_name(args, steps_key, mode)}: must be an integer >= "
                              f"{minimum}, got {steps!r}{why}")
    keys = [_mode_key(mode, option) for option in ("points", "reg_points", "lr")]
    names = {key: _option_name(args, key, mode) for key in keys}
    require_positive(cfg, keys[:2], names)
    # nephi's optim.lr may be null: automatic (nephi.io_modes.NEPHI_LR)
    require_positive(cfg, keys[2:], names, allow_null=mode == "nephi")


def _check_modes(args) -> None:
    """--pair or --pairs (not both); the options that only make sense with --checkpoint."""
    if (args.pair is None) == (args.pairs is None):
        raise NephiInputError("give one of --pair MOVING FIXED or --pairs PAIRS.csv")
    for name, value in (("--pairs", args.pairs), ("--io-params", args.io_params),
                        ("--moving-mask", args.moving_mask)):
        if value is not None and not args.checkpoint:
            raise NephiInputError(f"{name}: needs --checkpoint (a trained network)")
    if args.pairs and (args.mask or args.landmarks or args.moving_landmarks or args.moving_mask):
        raise NephiInputError("--pairs: masks and landmarks come from the CSV's columns, not "
                              "from --mask, --moving-mask, --landmarks or --moving-landmarks")


def _run(argv) -> int:
    from nephi.register import LoadedPair, register

    args = build_parser().parse_args(argv)
    _check_modes(args)
    model = None
    if args.checkpoint:
        from nephi.feedforward import base_config, load_model

        model = load_model(args.checkpoint)
    cfg = resolve_config(args, base_config(model) if model is not None else None)
    from nephi.register import select_device, validate_config
    from nephi.outputs import check_output_dir

    # Every check that needs no image comes first; nothing is created before register() writes.
    check_options(args, cfg)
    validate_config(cfg)
    select_device(cfg["device"])
    check_output_dir(args.out)
    command = ["nephi-infer", *argv]
    if args.pairs:
        from nephi.feedforward import register_pairs

        counts = register_pairs(model, args.pairs, args.out, cfg, args.io_params or "latent",
                                command=command, progress=not args.no_progress)
        print(f"nephi-infer: {counts['done']} registered, {counts['skipped']} skipped (already "
              f"done), {counts['failed']} failed; results in {args.out}")
        return 2 if counts["failed"] else 0
    moving, fixed = args.pair
    pair = LoadedPair(moving, fixed, args.mask, args.landmarks, args.moving_landmarks)
    if model is not None:
        from nephi.feedforward import register_with_model
        from nephi.imageio import load_mask

        moving_mask = (load_mask(args.moving_mask, pair.moving.grid, what="moving mask")
                       if args.moving_mask else None)
        summary = register_with_model(model, pair, args.out, cfg, args.io_params or "latent",
                                      moving_mask, command=command,
                                      progress=not args.no_progress)
    else:
        summary = register(pair, args.out, cfg, command=command, progress=not args.no_progress)
    line = (f"nephi-infer: wrote {args.out}: NCC {summary['ncc_before']:.4f} -> "
            f"{summary['ncc_after']:.4f}, folding {summary['folding_percent']:.4f} %, "
            f"inverse consistency {summary['inverse_consistency_mm_mean']:.3f} mm, "
            f"{summary['wall_time_s']:.1f} s")
    if "landmark_error_after_mm" in summary:
        line += (f", landmark error {summary['landmark_error_before_mm']['mean_mm']:.2f} -> "
                 f"{summary['landmark_error_after_mm']['mean_mm']:.2f} mm")
    print(line)
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-infer", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
