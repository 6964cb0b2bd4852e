"""``nephi-prep``: build datasets for nephi (one console script, one subcommand per source), and
the standalone generator commands ``python -m data_prep.synthetic_lung | triangles_circles |
dirlab``.

HDF5 pair files (layout in :mod:`nephi.data.pairfile`, read by ``train/train.py``)::

    nephi-prep pairs --csv PAIRS.csv --out DATA.h5 [--spacing MM..] [--shape N..]
               [--intensity percentile|window|none] [--window LO HI] [--percentiles LO HI]
               [--apply-mask] [--val-fraction F] [--workers W]
    nephi-prep scans --csv SCANS.csv --out DATA.h5 [--pairs-per-scan K] [--intra N]
               [--intra-max-mm MM] [--intra-scale-mm MM] [--seed S] [the options of pairs]
    nephi-prep copdgene ROOT --out DATA.h5            (paper recipe, layout in nephi/data/copdgene.py)
    nephi-prep synthetic-lung --n N --out DATA.h5     (population, pair i from seed SEED + i)
    nephi-prep triangles-circles --n N --size S --mode solid|hollow --out DATA.h5

``synthetic-lung`` and ``triangles-circles`` write NIfTI folders instead when ``--out`` does not
end in ``.h5`` / ``.hdf5`` (one lung pair; T&C pair folders). ``nephi-prep dirlab ROOT --out DIR``
converts DIR-LAB raw data to NIfTI and a pairs CSV that ``nephi-prep pairs`` reads.

PAIRS.csv: header with ``moving,fixed`` and optionally ``name, moving_mask, fixed_mask,
moving_points, fixed_points, moving_label, fixed_label``; relative paths are relative to the
CSV's folder; points are CSV files ``x,y[,z]`` in RAS mm. SCANS.csv (unpaired scans): ``image``
and optionally ``mask, points, label, name, subject``; pairs are drawn among them
(:func:`nephi.data.builders.build_from_scans`).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from nephi.cli.common import OneLineParser, run_cli
from nephi.config.validate import ALIGN_MODES
from nephi.data.builders import (build_from_rows, build_from_scans, build_synthetic_lung,
                                 build_triangles_circles)
from nephi.data.copdgene import find_copdgene_pairs
from nephi.data.dirlab import convert_dirlab
from nephi.data.preprocess import PrepConfig, read_pairs_csv, read_scans_csv
from nephi.data.synthetic_lung import make_lung_pair
from nephi.data.triangles_circles import MODES, make_tc_dataset, save_tc_pair_nifti
from nephi.errors import NephiInputError
from nephi.io.atomic import AtomicDir
from nephi.results.metrics import foreground_dice


H5_SUFFIXES = (".h5", ".hdf5")


def _is_h5(path: str) -> bool:
    return path.lower().endswith(H5_SUFFIXES)


def _add_split_workers(p: argparse.ArgumentParser, workers: bool = True) -> None:
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of pairs in the validation split (default 0.1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")
    if workers:
        p.add_argument("--workers", type=int, default=1,
                       help="processes preprocessing pairs in parallel (default 1)")


def _add_prep_options(p: argparse.ArgumentParser, spacing=None, shape=None, intensity="percentile",
                      window=(-1000.0, 0.0), apply_mask=False) -> None:
    p.add_argument("--spacing", type=float, nargs="+", default=spacing, metavar="MM",
                   help="target voxel size in mm, one value or one per axis (default "
                        f"{'the fixed image spacing' if spacing is None else spacing})")
    p.add_argument("--shape", type=int, nargs="+", default=shape, metavar="N",
                   help="target grid shape, one value or one per axis, padded / cropped around "
                        "the fixed image centre (default "
                        f"{'covers every fixed image' if shape is None else shape})")
    p.add_argument("--intensity", choices=["percentile", "window", "none"], default=intensity,
                   help=f"intensity normalization before resampling (default {intensity})")
    p.add_argument("--window", type=float, nargs=2, default=list(window), metavar=("LO", "HI"),
                   help="clamp window mapped to [0, 1] with --intensity window (default "
                        f"{window[0]:g} {window[1]:g}, HU)")
    p.add_argument("--percentiles", type=float, nargs=2, default=[1.0, 99.0],
                   metavar=("LO", "HI"), help="percentiles mapped to 0 and 1 with --intensity "
                                              "percentile (default 1 99)")
    p.add_argument("--align", choices=list(ALIGN_MODES), default="none",
                   help="global alignment of each moving image to its fixed image before "
                        "resampling, as nephi-infer --align runs it (default none); stored "
                        "with the data and in checkpoints, so nephi-infer --checkpoint runs it "
                        "in front of the network by default")
    if apply_mask:
        p.add_argument("--no-apply-mask", dest="apply_mask", action="store_false",
                       help="do not multiply the images by their masks")
    else:
        p.add_argument("--apply-mask", action="store_true",
                       help="multiply each image by its mask (needs both masks)")


def _prep(args) -> PrepConfig:
    return PrepConfig(spacing=args.spacing, shape=args.shape,
                      intensity={"method": args.intensity, "low": args.percentiles[0],
                                 "high": args.percentiles[1], "window": list(args.window)},
                      apply_mask=args.apply_mask, align=args.align)


def _report(out: str, counts: dict) -> int:
    print(f"nephi-prep: wrote {out}: {counts['train']} training and {counts['val']} validation "
          "pairs")
    return 0


def _command(args) -> str:
    return "nephi-prep " + " ".join(sys.argv[1:])


def _workers(value: int) -> int:
    if value < 1:
        raise NephiInputError(f"--workers: must be positive, got {value}")
    return value


def _pairs(args) -> int:
    rows = read_pairs_csv(args.csv)
    counts = build_from_rows(rows, args.out, _prep(args), args.val_fraction, args.split_seed,
                             _workers(args.workers), builder=_command(args))
    return _report(args.out, counts)


def _scans(args) -> int:
    rows = read_scans_csv(args.csv)
    counts = build_from_scans(rows, args.out, _prep(args), args.pairs_per_scan, args.intra,
                              args.intra_max_mm, args.intra_scale_mm, args.val_fraction,
                              args.seed, args.split_seed, _workers(args.workers),
                              builder=_command(args))
    return _report(args.out, counts)


def _copdgene(args) -> int:
    rows, skipped = find_copdgene_pairs(args.root, require_masks=args.apply_mask)
    for subject, reason in skipped.items():
        print(f"nephi-prep: skipped {subject}: {reason}", file=sys.stderr)
    counts = build_from_rows(rows, args.out, _prep(args), args.val_fraction, args.split_seed,
                             _workers(args.workers), builder=_command(args))
    return _report(args.out, counts)


def _synthetic_lung(nifti_handler):
    def handler(args) -> int:
        if not _is_h5(args.out):
            if args.n != 1:
                raise NephiInputError("--n: a NIfTI folder holds one pair; give --out DATA.h5 "
                                      "for a population")
            return nifti_handler(args)
        counts = build_synthetic_lung(args.out, args.n, args.shape, args.spacing, args.motion_mm,
                                      args.seed, args.n_landmarks, args.val_fraction,
                                      args.apply_mask, _workers(args.workers), args.noise_hu,
                                      args.split_seed, builder=_command(args))
        return _report(args.out, counts)

    return handler


def _triangles_circles(nifti_handler):
    def handler(args) -> int:
        if not _is_h5(args.out):
            return nifti_handler(args)
        counts = build_triangles_circles(args.out, args.n, args.size, args.mode, args.seed,
                                         args.val_fraction, args.split_seed,
                                         builder=_command(args))
        return _report(args.out, counts)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nephi-prep",
                           description="Build datasets for nephi: HDF5 pair files for training "
                                       "(pairs, copdgene, synthetic-lung, triangles-circles with "
                                       "--out DATA.h5) and NIfTI conversions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pairs", help="NIfTI pairs listed in a CSV -> HDF5 pair file",
                       description="Preprocess the pairs of a CSV (columns moving,fixed and "
                                   "optionally name, moving_mask, fixed_mask, moving_points, "
                                   "fixed_points, moving_label, fixed_label) into one HDF5 file.")
    p.add_argument("--csv", required=True, help="pairs CSV")
    p.add_argument("--out", required=True, help="output HDF5 file")
    _add_prep_options(p)
    _add_split_workers(p)
    p.set_defaults(func=_pairs)

    p = sub.add_parser("scans", help="unpaired scans listed in a CSV -> HDF5 pair file",
                       description="Training pairs drawn among unpaired scans (CSV columns "
                                   "image and optionally mask, points, label, name, subject): "
                                   "inter-subject pairs of different scans and, with --intra, "
                                   "a scan with a random smooth deformation of itself (known "
                                   "map: its points are carried over). The validation split "
                                   "is made of whole subjects.")
    p.add_argument("--csv", required=True, help="scans CSV")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--pairs-per-scan", type=int, default=4, metavar="K",
                   help="inter-subject pairs with each scan as the fixed image, moving scans "
                        "drawn among the others of its split (default 4; 0 = none)")
    p.add_argument("--intra", type=int, default=0, metavar="N",
                   help="intra-subject pairs per scan: the scan (fixed) and a random smooth "
                        "deformation of it (moving) (default 0)")
    p.add_argument("--intra-max-mm", type=float, default=8.0, metavar="MM",
                   help="largest velocity (about the largest displacement) of those "
                        "deformations in mm (default 8)")
    p.add_argument("--intra-scale-mm", type=float, default=40.0, metavar="MM",
                   help="distance over which they vary in mm (default 40)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the pair draws and deformations (default 0)")
    _add_prep_options(p)
    _add_split_workers(p)
    p.set_defaults(func=_scans)

    p = sub.add_parser("copdgene", help="COPDGene-style folder -> HDF5 (NePhi paper recipe)",
                       description="Inspiration/expiration lung CT pairs of a COPDGene-style "
                                   "folder (layout: see nephi/data/copdgene.py) with the paper's "
                                   "preprocessing: 2 mm, 175^3, [-1000, 0] HU -> [0, 1], lung "
                                   "mask applied; moving = expiration, fixed = inspiration.")
    p.add_argument("root", help="folder with <subject>/.../<subject>_{INSP,EXP}_*.nii.gz")
    p.add_argument("--out", required=True, help="output HDF5 file")
    _add_prep_options(p, spacing=[2.0], shape=[175], intensity="window", apply_mask=True)
    _add_split_workers(p)
    p.set_defaults(func=_copdgene)

    p = add_command(sub, "synthetic_lung")
    p.add_argument("--n", type=int, default=1,
                   help="pairs (seeds SEED .. SEED+N-1) in the HDF5 population (default 1)")
    p.add_argument("--apply-mask", action="store_true",
                   help="HDF5: multiply the images by their lung masks")
    _add_split_workers(p)
    p.set_defaults(func=_synthetic_lung(p.get_default("func")))
    p.description = (f"{p.description} With --out ending in .h5: a population of N pairs "
                     "(lung window [-1000, 0] HU -> [0, 1], masks and landmarks stored).")

    p = add_command(sub, "triangles_circles")
    _add_split_workers(p, workers=False)
    p.set_defaults(func=_triangles_circles(p.get_default("func")))
    p.description = f"{p.description} With --out ending in .h5: one HDF5 pair file with labels."

    add_command(sub, "dirlab")
    return parser


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    if _is_h5(args.out) and os.path.isdir(args.out):
        raise NephiInputError(f"--out {args.out}: is a folder")
    return int(args.func(args) or 0)


def main(argv=None) -> int:
    return run_cli("nephi-prep", _run, argv)


# ----------------------------------------------------------------- generators and converters
_DESCRIPTIONS = {
    "synthetic_lung": "Synthetic 3-D lung-CT image pairs (inhale / exhale) with a known breathing "
                      "motion.",
    "triangles_circles": "Synthetic 2-D 'Triangles and Circles' (T&C) registration dataset.",
    "dirlab": "Convert the DIR-LAB lung CT benchmarks to NIfTI images and RAS landmark CSVs.",
}


def _synthetic_lung_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64],
                        help="grid size in voxels (default 64 64 64)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 4.0],
                        help="voxel size in mm (default 4 4 4)")
    parser.add_argument("--motion-mm", type=float, default=12.0,
                        help="nominal diaphragm motion in mm (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-landmarks", type=int, default=300,
                        help="number of landmarks (default 300)")
    parser.add_argument("--noise-hu", type=float, default=20.0,
                        help="image noise standard deviation in HU (default 20)")


def _synthetic_lung_files(args: argparse.Namespace) -> int:
    """Write one pair into ``args.out`` and print a one-line summary."""
    pair = make_lung_pair(shape=args.shape, spacing=args.spacing, motion_mm=args.motion_mm,
                          n_landmarks=args.n_landmarks, seed=args.seed, noise_hu=args.noise_hu)
    with AtomicDir(args.out) as tmp:
        pair.save(tmp)
    disp = pair.landmark_displacements()
    shape = "x".join(str(v) for v in args.shape)
    spacing = "x".join(f"{v:g}" for v in args.spacing)
    print(f"wrote synthetic lung pair {shape} @ {spacing} mm (seed {args.seed}) to {args.out}: "
          f"{len(disp)} landmarks, mean displacement {disp.mean():.2f} mm "
          f"(max {disp.max():.2f} mm)")
    return 0


def _triangles_circles_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=100, help="number of pairs (default 100)")
    parser.add_argument("--size", type=int, default=128, help="image side S in pixels (default 128)")
    parser.add_argument("--mode", choices=MODES, default="solid", help="solid or hollow shapes")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _triangles_circles_files(args: argparse.Namespace) -> int:
    """Write ``args.out/pair_XXXX/{moving,fixed,moving_label,fixed_label}.nii.gz``."""
    data = make_tc_dataset(args.n, args.size, args.mode, args.seed)
    with AtomicDir(args.out) as tmp:
        for idx in range(args.n):
            pair = {k: data[k][idx] for k in ("moving", "fixed", "moving_label", "fixed_label")}
            save_tc_pair_nifti(pair, os.path.join(tmp, f"pair_{idx:04d}"))
    if args.n:
        scores = [foreground_dice(m, f) for m, f in zip(data["moving_label"], data["fixed_label"])]
        mean_dice = f", mean initial Dice {np.mean(scores):.3f}"
    else:
        mean_dice = ""
    print(f"wrote {args.n} {args.mode} triangles-circles pairs of size {args.size} to {args.out}{mean_dice}")
    return 0


def _dirlab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder with the downloaded DIR-LAB data (searched "
                                     "recursively for case*/copd* images and landmark files)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="cases to convert, e.g. copd1 copd2 case5 (default: all found)")
    parser.add_argument("--table", default=None,
                        help="CSV with columns case,nx,ny,nz,sx,sy,sz overriding the built-in "
                             "image sizes and voxel spacings (mm)")
    parser.add_argument("--hu-offset", type=int, default=None,
                        help="integer added to raw values (default -1024 for both sets, giving "
                             "HU; 0 keeps raw values)")


def _dirlab_files(args: argparse.Namespace) -> int:
    """Handler of the ``dirlab`` command; returns the process exit status."""
    try:
        results = convert_dirlab(args.root, args.out, cases=args.cases, table=args.table,
                                 hu_offset=args.hu_offset)
    except (FileNotFoundError, ValueError) as exc:
        raise NephiInputError(str(exc)) from None
    print(f"{'case':<8} {'points':>6} {'mean mm':>9} {'std mm':>8} {'published':>9}")
    for r in results:
        published = r["published_mean_error_mm"]
        print(f"{r['case']:<8} {r['n_points']:>6} {r['mean_error_mm']:>9.2f} "
              f"{r['std_error_mm']:>8.2f} {'-' if published is None else f'{published:.2f}':>9}")
    print(f"wrote {len(results)} case(s), pairs.csv and initial_errors.csv to {args.out}")
    return 0




_COMMANDS = {
    "synthetic_lung": ("3-D synthetic inhale/exhale lung CT pair with landmarks",
                       _synthetic_lung_arguments, _synthetic_lung_files),
    "triangles_circles": ("2-D Triangles and Circles synthetic pairs",
                          _triangles_circles_arguments, _triangles_circles_files),
    "dirlab": ("convert DIR-LAB 4DCT / COPDGene raw data to NIfTI and RAS landmark CSVs",
               _dirlab_arguments, _dirlab_files),
}
"""Generator and converter commands: name -> (help, add arguments, write the files)."""


def add_command(subparsers, name: str) -> argparse.ArgumentParser:
    """The generator command ``name`` (``synthetic_lung``, ``triangles_circles``, ``dirlab``) as
    a subcommand of ``subparsers``; its ``func`` default writes the files and returns the exit
    status."""
    help_text, arguments, files = _COMMANDS[name]
    parser = subparsers.add_parser(name.replace("_", "-"), help=help_text,
                                   description=_DESCRIPTIONS[name])
    arguments(parser)
    parser.set_defaults(func=files)
    return parser


def command_main(name: str, argv=None) -> int:
    """``python -m data_prep.<name>``: one generator command on its own (one-line errors)."""
    _, arguments, files = _COMMANDS[name]
    prog = f"python -m data_prep.{name}"

    def run(args_list) -> int:
        parser = OneLineParser(prog=prog, description=_DESCRIPTIONS[name])
        arguments(parser)
        return files(parser.parse_args(args_list))

    return run_cli(prog, run, argv)



if __name__ == "__main__":
    sys.exit(main())
