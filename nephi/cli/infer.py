"""``nephi-infer``: register a moving image to a fixed image (a thin layer over nephi.pipeline)."""

from __future__ import annotations

import argparse
import os
import sys

from nephi.cli.common import OneLineParser, run_cli
from nephi.config.loader import resolve_config as resolve_config_files
from nephi.config.options import MODE_OPTIONS, RUN_OPTIONS, active_mode, apply_options, key_names
from nephi.config.validate import validate_pairwise
from nephi.errors import NephiInputError
from nephi.io.atomic import check_output_dir
from nephi.io.itk_affine import read_transform
from nephi.models.fields import PRECISIONS
from nephi.objectives.similarity import SIMILARITIES
from nephi.pipeline import feedforward, pairwise
from nephi.pipeline.feedforward import base_config, load_model, register_with_model
from nephi.pipeline.inputs import LoadedPair, select_device
from nephi.results.result import summary_line
from nephi.transforms.displacement import Field


__all__ = ["build_parser", "resolve_config", "check_options", "main"]

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="nephi-infer",
        description="Register MOVING onto FIXED with NePhi. Outputs in --out: warped.nii.gz, "
                    "warp.nii.gz (ITK displacement field, fixed grid, LPS mm: fixed point p maps "
                    "to moving point p + d(p)), inverse_warp.nii.gz, jacobian.nii.gz, "
                    "summary.json.")
    p.add_argument("--pair", nargs=2, metavar=("MOVING", "FIXED"),
                   help="moving image A and fixed image B (NIfTI, 2-D or 3-D)")
    p.add_argument("--pairs", metavar="PAIRS.csv",
                   help="register every row of a CSV (columns moving,fixed; optional name, "
                        "moving_mask, fixed_mask, moving_points, fixed_points) into "
                        "--out/<name or pair_NNNN>/, skipping pairs already done, and write "
                        "--out/summary.csv (pairwise, or feed-forward with --checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="result folder")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="trained network (train/train.py checkpoint): feed-forward prediction, "
                        "then --io-steps of instance optimization from it (default 0)")
    p.add_argument("--io-params", choices=["latent", "all"],
                   help="with --checkpoint: what IO optimizes, the latent codes or the latent "
                        "codes and the field networks (default latent)")
    p.add_argument("--moving-mask", metavar="MOVING_MASK",
                   help="moving-image mask: the similarity counts only where both masks "
                        "hold, and the backward direction samples it (with --checkpoint: needed "
                        "when the network was trained on masked images)")
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
    p.add_argument("--similarity", choices=sorted(SIMILARITIES),
                   help="one similarity for every stage, alignment and IO (default ncc; mi: "
                        "Parzen mutual information, for multi-modal pairs; lncc: local NCC, "
                        "for IO, the alignment keeping ncc)")
    p.add_argument("--precision", choices=["auto", *PRECISIONS],
                   help="field networks' hidden layers in bfloat16 or float32 (default auto: "
                        "bf16 on CUDA and on CPUs with AVX-512 BF16 / AMX)")
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
    p.add_argument("--output-format", choices=["nii.gz", "nii", "nrrd", "mha"],
                   help="format of warped and jacobian images (default: the fixed image's; "
                        "displacement fields are always ITK NIfTI and .h5)")
    p.add_argument("--log-jacobian", action="store_true", default=None,
                   help="also write log_jacobian (log det J of phi_AB; NaN at folds)")
    p.add_argument("--align", choices=["none", "rigid", "affine"],
                   help="global alignment before the deformable stage: centre of mass, then "
                        "rigid, then affine on an image pyramid (default affine; with "
                        "--checkpoint the one its training pairs went through, nephi-prep "
                        "--align, none by default)")
    p.add_argument("--align-only", action="store_true", default=None,
                   help="stop after the alignment: a pure linear registration")
    p.add_argument("--initial-transform", metavar="TRANSFORM",
                   help="transform mapping fixed to moving points to start from: an ITK / ANTs "
                        "linear transform (.mat, .txt, .h5; refined by --align unless --align "
                        "none) or displacement field (ITK NIfTI like warp.nii.gz or ANTs' "
                        "*Warp.nii.gz, .h5, composite .h5; no alignment on top: IO refines it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _given(args) -> dict:
    """The table options (:mod:`nephi.config.options`) given on the command line."""
    names = ("io_mode", "similarity", *MODE_OPTIONS, *RUN_OPTIONS)
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def resolve_config(args, base: dict | None = None) -> dict:
    """``base`` (default: the pairwise defaults) <- --config <- --set <- options."""
    cfg = resolve_config_files(base if base is not None else "pairwise", args.config, args.set,
                               label="--set")
    return apply_options(cfg, _given(args))


def check_options(args, cfg: dict) -> None:
    """Every check of the resolved config, before any file is read; messages name the option a
    value came from. Zero IO steps are accepted only with ``--checkpoint`` (a prediction to
    keep); without one they would return the identity map."""
    names = key_names(active_mode(cfg), _given(args))
    validate_pairwise(cfg, names, min_steps=0 if getattr(args, "checkpoint", None) else 1)


def _check_modes(args) -> None:
    """--pair or --pairs (not both); the options that only make sense with --checkpoint."""
    if (args.pair is None) == (args.pairs is None):
        raise NephiInputError("give one of --pair MOVING FIXED or --pairs PAIRS.csv")
    if args.io_params is not None and not args.checkpoint:
        raise NephiInputError("--io-params: needs --checkpoint (a trained network)")
    if args.initial_transform and (args.pairs or args.checkpoint):
        raise NephiInputError("--initial-transform: only with --pair and without --checkpoint")
    if args.pairs and (args.mask or args.landmarks or args.moving_landmarks or args.moving_mask):
        raise NephiInputError("--pairs: masks and landmarks come from the CSV's columns, not "
                              "from --mask, --moving-mask, --landmarks or --moving-landmarks")


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    _check_modes(args)
    model = None
    if args.checkpoint:
        model = load_model(args.checkpoint)
    cfg = resolve_config(args, base_config(model) if model is not None else None)
    # Every check that needs no image comes first; nothing is created before register() writes.
    check_options(args, cfg)
    select_device(cfg["device"])
    check_output_dir(args.out)
    command = ["nephi-infer", *argv]
    progress = not args.no_progress
    if args.pairs:
        if model is not None:
            counts = feedforward.register_pairs(model, args.pairs, args.out, cfg,
                                                args.io_params or "latent", command=command,
                                                progress=progress)
        else:
            counts = pairwise.register_pairs(args.pairs, args.out, cfg, command=command,
                                             progress=progress)
        print(f"nephi-infer: {counts['done']} registered, {counts['skipped']} skipped (already "
              f"done), {counts['failed']} failed; results in {args.out}")
        return 2 if counts["failed"] else 0
    moving, fixed = args.pair
    pair = LoadedPair(moving, fixed, args.mask, args.landmarks, args.moving_landmarks,
                      args.moving_mask)
    initial, extra = None, {}
    if args.initial_transform:
        initial = read_transform(args.initial_transform, pair.fixed.ndim)
        kind = "displacement field" if isinstance(initial, Field) else "affine"
        if kind == "displacement field" and args.align in ("rigid", "affine"):
            raise NephiInputError(f"--align {args.align}: --initial-transform "
                                  f"{args.initial_transform} is a displacement field, and no "
                                  "alignment runs on top of one; leave out --align")
        extra = {"initial_transform": {"path": os.path.abspath(args.initial_transform),
                                       "type": kind}}
    if model is not None:
        summary = register_with_model(model, pair, args.out, cfg, args.io_params or "latent",
                                      pair.moving_mask, command=command, progress=progress)
    else:
        summary = pairwise.register(pair, args.out, cfg, command=command, progress=progress,
                                    initial=initial, extra_summary=extra)
    print(f"nephi-infer: wrote {args.out}: {summary_line(summary, full=True)}")
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-infer", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
