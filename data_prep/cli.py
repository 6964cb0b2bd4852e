"""``python -m data_prep.cli`` (= ``nephi-prep``): a thin entry point over :mod:`nephi.cli.prep`."""

import sys

from nephi.cli.prep import main


if __name__ == "__main__":
    sys.exit(main())
