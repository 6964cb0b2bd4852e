"""``nephi-train`` (also ``accelerate launch -m nephi.cli.train`` and ``train/train.py``): train
learning-based NePhi.

``accelerate launch [opts] -m nephi.cli.train --config CONFIG.yaml --output-dir DIR [--resume]
[key=value ...]``. Without ``--config`` the packaged defaults (``nephi/config/defaults/
train.yaml``) apply; ``train/train.py`` in a checkout defaults to ``configs/lung_cpu.yaml``. The
work is done by :class:`nephi.learn.trainer.Trainer`.
"""

from __future__ import annotations

import argparse
import os
import sys

from nephi.cli.common import OneLineParser, run_cli
from nephi.config.loader import apply_overrides, load_defaults, merge, resolve_config
from nephi.errors import NephiInputError
from nephi.learn.trainer import step_checkpoints, train
from nephi.models.checkpoint import load_checkpoint


__all__ = ["build_parser", "main"]


def build_parser(default_config: str | None, prog: str = "nephi-train") -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="Train learning-based NePhi (encoder + field networks, paper eq. 9). Run "
                    "it with `accelerate launch [opts] -m nephi.cli.train ...` (or "
                    "train/train.py in a checkout) for several processes or GPUs.")
    p.add_argument("--config", default=default_config, metavar="YAML",
                   help=f"training config (default {default_config or 'the packaged defaults'})")
    p.add_argument("--output-dir", metavar="DIR",
                   help="run folder (default: the config's output_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in DIR with its step count, schedule "
                        "and configuration (key=value arguments still apply, e.g. train.steps)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config keys, e.g. train.steps=200 data.path=DATA.h5")
    return p


def main(argv=None, default_config: str | None = None, prog: str = "nephi-train") -> int:
    """Command line of training; returns the exit status."""

    def run(args_list) -> int:
        args = build_parser(default_config, prog).parse_args(args_list)
        if args.resume:
            out = args.output_dir
            if out is None:
                out = resolve_config("train", args.config, args.overrides)["output_dir"]
            found = step_checkpoints(out)
            if not found:
                raise NephiInputError(f"--resume: no checkpoint in {os.path.join(out, 'checkpoints')}")
            # on the defaults: a run from before a section existed resumes with its default
            saved = merge(load_defaults("train"), load_checkpoint(found[-1])["config"],
                          source=f"checkpoint {found[-1]}")
            cfg = apply_overrides(saved, args.overrides)
        else:
            cfg = resolve_config("train", args.config, args.overrides)
            out = args.output_dir or cfg["output_dir"]
        if not args.resume and step_checkpoints(out):
            raise NephiInputError(f"--output-dir {out}: already holds checkpoints; add --resume "
                                  "to continue, or choose another folder")
        train(cfg, out, resume=args.resume, command=[prog, *args_list])
        return 0

    return run_cli(prog, run, argv)


if __name__ == "__main__":
    sys.exit(main())
