"""``python -m data_prep.triangles_circles``: a thin entry point over :mod:`nephi.cli.prep`."""

import sys

from nephi.cli.prep import command_main

if __name__ == "__main__":
    sys.exit(command_main("triangles_circles"))
