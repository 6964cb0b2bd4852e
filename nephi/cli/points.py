"""``nephi-points``: map a point set through a saved registration result (thin entry point; the
logic is in :mod:`nephi.results.points`)."""

from __future__ import annotations

import os
import sys

from nephi.cli.common import OneLineParser, run_cli


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="nephi-points",
        description="Map points with a nephi-infer result folder. Points go the opposite way to "
                    "images: fixed-to-moving (default) uses warp.nii.gz, moving-to-fixed uses "
                    "inverse_warp.nii.gz; p -> p + d(p), d linear, zero outside its grid (ITK).")
    p.add_argument("--result", required=True, metavar="DIR", help="nephi-infer result folder")
    p.add_argument("--points", required=True, metavar="IN.csv",
                   help="points: CSV with header x,y,z (2-D: x,y) in RAS mm (LPS with --lps), "
                        "ITK/ANTs point CSV (x,y,z,t: LPS), 3D Slicer .fcsv or .mrk.json")
    p.add_argument("--out", required=True, metavar="OUT.csv",
                   help="mapped points, in the format of the suffix (.csv, .fcsv, .mrk.json; "
                        "with --lps a .csv is the ANTs point CSV)")
    p.add_argument("--direction", choices=["fixed-to-moving", "moving-to-fixed"],
                   default="fixed-to-moving", help="default fixed-to-moving")
    p.add_argument("--lps", action="store_true",
                   help="input and output coordinates are LPS mm (ITK, ANTs, 3D Slicer) instead "
                        "of RAS mm")
    return p


def _run(argv) -> int:
    from nephi.results.points import map_points_file
    from nephi.results.result import Result

    args = build_parser().parse_args(argv)
    result = Result.load(args.result, what="--result")
    info = map_points_file(result, args.points, args.out, args.direction, args.lps)
    line = (f"nephi-points: wrote {args.out}: {info['count']} points {args.direction} "
            f"({'LPS' if args.lps else 'RAS'} mm)")
    if info["outside"]:
        line += (f"; {info['outside']} lie outside the grid of "
                 f"{os.path.basename(info['field'])} and keep zero displacement")
    print(line)
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-points", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
