"""``python -m data_prep.synthetic_lung``: a thin entry point over :mod:`nephi.data.synthetic_lung`."""

import sys

from nephi.data.synthetic_lung import main


if __name__ == "__main__":
    sys.exit(main())
