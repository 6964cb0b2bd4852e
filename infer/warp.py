"""``python -m infer.warp``: a thin entry point over :mod:`nephi.cli.warp`."""

import sys

from nephi.cli.warp import main


if __name__ == "__main__":
    sys.exit(main())
