"""``nephi-warp``: apply a saved registration result to another image (thin entry point; the
logic is in :mod:`nephi.results.warp`)."""

from __future__ import annotations

import sys

from nephi.cli.common import OneLineParser, run_cli


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="nephi-warp",
        description="Warp IMG with a nephi-infer result folder. Default: IMG lies in moving space "
                    "and is pulled onto the fixed grid with warp.nii.gz (like warped.nii.gz). "
                    "--inverse: IMG lies in fixed space and is pulled onto the moving grid with "
                    "inverse_warp.nii.gz. IMG is sampled in physical space, so it may have any "
                    "shape, spacing and orientation.")
    p.add_argument("--result", required=True, metavar="DIR", help="nephi-infer result folder")
    p.add_argument("--image", required=True, metavar="IMG", help="image to warp (NIfTI)")
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output image")
    p.add_argument("--interp", choices=["linear", "cubic", "nearest", "label"], default="linear",
                   help="linear (default) or cubic (B-spline) for intensities; nearest or label "
                        "(generic label: per-label linear interpolation, largest weight wins) "
                        "for label maps. The voxel type is kept.")
    p.add_argument("--reference", metavar="REF.nii.gz",
                   help="write the output on REF's grid instead of the warp's own grid (points of "
                        "REF outside the warp's grid get zero displacement, as in ITK)")
    p.add_argument("--inverse", action="store_true",
                   help="use inverse_warp.nii.gz: bring a fixed-space image into moving space")
    return p


def _run(argv) -> int:
    from nephi.results.result import Result
    from nephi.results.warp import warp_file

    args = build_parser().parse_args(argv)
    result = Result.load(args.result, what="--result")
    info = warp_file(result, args.image, args.out, args.interp, args.reference, args.inverse)
    print(f"nephi-warp: wrote {args.out} ({args.interp}, {info['dtype']}, shape "
          f"{'x'.join(str(n) for n in info['shape'])} on the {info['grid']} grid)")
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-warp", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
