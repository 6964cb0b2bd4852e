"""``nephi-infer``: register a moving image to a fixed image (thin entry point; logic in nephi)."""

from __future__ import annotations

import argparse
import math
import sys

from nephi.cli import run_cli
from nephi.errors import NephiInputError
from nephi.config import load_defaults, merge, parse_override, read_yaml, set_dotted


def build_parser() -> argparse.ArgumentParser:
    from nephi.cli import OneLineParser

    p = OneLineParser(
        prog="nephi-infer",
        description="Register MOVING onto FIXED with NePhi. Outputs in --out: warped.nii.gz, "
                    "warp.nii.gz (ITK displacement field, fixed grid, LPS mm: fixed point p maps "
                    "to moving point p + d(p)), inverse_warp.nii.gz, jacobian.nii.gz, "
                    "summary.json.")
    p.add_argument("--pair", nargs=2, metavar=("MOVING", "FIXED"), required=True,
                   help="moving image A and fixed image B (NIfTI, 2-D or 3-D)")
    p.add_argument("--out", required=True, metavar="DIR", help="result folder")
    p.add_argument("--io-steps", type=int, help="instance-optimization steps (default 500)")
    p.add_argument("--mask", metavar="FIXED_MASK", help="fixed-image mask: similarity points "
                   "are drawn inside it; metrics are reported inside it")
    p.add_argument("--points", type=int, help="similarity points per direction and step")
    p.add_argument("--reg-points", type=int, help="GradICON points per step")
    p.add_argument("--lr", type=float, help="learning rate of the field networks")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--config", metavar="YAML", help="config file overriding the defaults")
    p.add_argument("--landmarks", metavar="FIXED_POINTS.csv",
                   help="fixed-space points (CSV x,y,z, RAS mm) to map into moving space")
    p.add_argument("--moving-landmarks", metavar="MOVING_POINTS.csv",
                   help="corresponding moving points: landmark error goes into summary.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set loss.lambda_reg=5 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_config(args) -> dict:
    cfg = load_defaults("pairwise")
    if args.config:
        cfg = merge(cfg, _read_config(args.config), source=f"config {args.config}")
    for text in args.set:
        key, value = parse_override(text)
        cfg = set_dotted(cfg, key, value, source=f"--set {text}")
    options = {"io_steps": "optim.steps", "points": "optim.points",
               "reg_points": "optim.reg_points", "lr": "optim.lr", "seed": "seed",
               "device": "device"}
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


OPTION_KEYS = {"optim.steps": "io_steps", "optim.points": "points",
               "optim.reg_points": "reg_points", "optim.lr": "lr"}


def _option_name(args, key: str) -> str:
    """The option a config value came from: ``--io-steps`` if given, else the config key."""
    attr = OPTION_KEYS.get(key)
    if attr is not None and getattr(args, attr, None) is not None:
        return "--" + attr.replace("_", "-")
    return f"config key {key}"


def check_options(args, cfg: dict) -> None:
    """Checks on the resolved config beyond validate_config, done before any file is read.

    Every number must be finite; --io-steps must be >= 1. Zero steps (no instance optimization)
    is only meaningful when a trained checkpoint supplies a prediction, so it is accepted only
    together with ``--checkpoint``; without one it would return the identity map.
    """

    def walk(node, prefix=""):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            elif isinstance(value, float) and not math.isfinite(value):
                raise NephiInputError(f"{_option_name(args, dotted)}: must be a finite number, "
                                      f"got {value!r}")
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, float) and not math.isfinite(item):
                        raise NephiInputError(f"config key {dotted}: must hold finite numbers, "
                                              f"got {value!r}")

    walk(cfg)
    steps = cfg["optim"]["steps"]
    minimum = 0 if getattr(args, "checkpoint", None) else 1
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < minimum:
        why = (" (0 steps would skip optimization and return the identity map)"
               if steps == 0 and minimum == 1 else "")
        raise NephiInputError(f"{_option_name(args, 'optim.steps')}: must be an integer >= "
                              f"{minimum}, got {steps!r}{why}")
    for key in ("optim.points", "optim.reg_points", "optim.lr"):
        section, name = key.split(".")
        value = cfg[section][name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise NephiInputError(f"{_option_name(args, key)}: must be positive, got {value!r}")


def _run(argv) -> int:
    from nephi.register import LoadedPair, register

    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    from nephi.register import select_device, validate_config
    from nephi.outputs import check_output_dir

    # Every check that needs no image comes first; nothing is created before register() writes.
    check_options(args, cfg)
    validate_config(cfg)
    select_device(cfg["device"])
    check_output_dir(args.out)
    moving, fixed = args.pair
    pair = LoadedPair(moving, fixed, args.mask, args.landmarks, args.moving_landmarks)
    summary = register(pair, args.out, cfg, command=["nephi-infer", *argv],
                       progress=not args.no_progress)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli("nephi-infer", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
