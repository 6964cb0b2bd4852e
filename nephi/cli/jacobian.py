"""``nephi-jacobian``: the Jacobian determinant of any displacement field nephi or ANTs wrote
(thin entry point; the logic is in :mod:`nephi.results.jacobian`)."""

from __future__ import annotations

import sys

from nephi.cli.common import OneLineParser, run_cli


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="nephi-jacobian",
        description="Jacobian determinant det(I + Dd) of a displacement field (ITK vector NIfTI "
                    "as nephi and ANTs write it), with physical derivatives (any orientation "
                    "and spacing), written as float32 on the field's grid. det <= 0 marks "
                    "folds.")
    p.add_argument("field", metavar="FIELD",
                   help="displacement-field NIfTI, or a nephi-infer result folder (its "
                        "warp.nii.gz is used)")
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output image")
    p.add_argument("--log", action="store_true",
                   help="write the natural log of the determinant instead (NaN at folds, "
                        "det <= 0)")
    return p


def _run(argv) -> int:
    from nephi.results.jacobian import jacobian_file

    args = build_parser().parse_args(argv)
    info = jacobian_file(args.field, args.out, log=args.log)
    what = "log det" if info["log"] else "det"
    print(f"nephi-jacobian: wrote {args.out} ({what}, shape "
          f"{'x'.join(str(n) for n in info['shape'])}): det min {info['min']:.4g}, "
          f"max {info['max']:.4g}, folding {info['folding_percent']:.3g}% (det <= 0)")
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-jacobian", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
