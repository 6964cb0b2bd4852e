"""``nephi-eval``: score one or many result folders (thin entry point; the logic and the exact
definitions of every number are in :mod:`nephi.results.evaluate`)."""

from __future__ import annotations

import sys

from nephi.cli.common import OneLineParser, run_cli


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="nephi-eval",
        description="Evaluate nephi-infer result folders: landmark error (mm), Dice of warped "
                    "label maps, folding (%), inverse consistency of the exported fields (mm). "
                    "Writes PREFIX.md (table) and PREFIX.csv (one row per folder) and prints "
                    "the table.")
    p.add_argument("results", nargs="+", metavar="DIR", help="result folders")
    p.add_argument("--fixed-points", metavar="F.csv",
                   help="fixed-space landmarks (CSV x,y,z, RAS mm); default: the landmarks "
                        "recorded in each folder's summary.json")
    p.add_argument("--moving-points", metavar="M.csv",
                   help="corresponding moving-space landmarks (with --fixed-points)")
    p.add_argument("--fixed-labels", metavar="L", help="fixed label map (NIfTI)")
    p.add_argument("--moving-labels", metavar="L",
                   help="moving label map: warped with generic-label interpolation, compared "
                        "with --fixed-labels by Dice")
    p.add_argument("--snap-to-voxel", action="store_true",
                   help="DIR-LAB convention: round each mapped landmark to the nearest moving "
                        "voxel centre before measuring")
    p.add_argument("--out", default="nephi_eval", metavar="PREFIX",
                   help="report files PREFIX.md and PREFIX.csv (default ./nephi_eval)")
    p.add_argument("--qc", action="store_true",
                   help="also write qc_overview.png into each result folder")
    return p


def _run(argv) -> int:
    from nephi.results.evaluate import check_options, evaluate_result, markdown_table, write_report
    from nephi.results.quicklook import result_overview
    from nephi.results.result import Result

    args = build_parser().parse_args(argv)
    check_options(args.fixed_points, args.moving_points, args.fixed_labels, args.moving_labels,
                  args.out)
    results = [Result.load(path) for path in args.results]
    rows = [evaluate_result(r, args.fixed_points, args.moving_points, args.fixed_labels,
                            args.moving_labels, args.snap_to_voxel) for r in results]
    pictures = [result_overview(r) for r in results] if args.qc else []
    md_path, csv_path = write_report(args.out, rows)
    sys.stdout.write(markdown_table(rows))
    print(f"nephi-eval: wrote {md_path} and {csv_path}"
          + (f"; quick looks: {', '.join(pictures)}" if pictures else ""))
    return 0


def main(argv=None) -> int:
    return run_cli("nephi-eval", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
