"""``python -m data_prep.triangles_circles``: a thin entry point over :mod:`nephi.data.triangles_circles`."""

import sys

from nephi.data.triangles_circles import main


if __name__ == "__main__":
    sys.exit(main())
