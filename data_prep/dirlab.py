"""``python -m data_prep.dirlab``: a thin entry point over :mod:`nephi.data.dirlab`."""

import sys

from nephi.data.dirlab import main


if __name__ == "__main__":
    sys.exit(main())
