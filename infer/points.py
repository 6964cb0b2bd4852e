"""``python -m infer.points``: a thin entry point over :mod:`nephi.cli.points`."""

import sys

from nephi.cli.points import main


if __name__ == "__main__":
    sys.exit(main())
