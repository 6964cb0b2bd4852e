"""``python -m infer.evaluate``: a thin entry point over :mod:`nephi.cli.evaluate`."""

import sys

from nephi.cli.evaluate import main


if __name__ == "__main__":
    sys.exit(main())
