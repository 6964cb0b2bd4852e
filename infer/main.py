"""``python -m infer.main``: a thin entry point over :mod:`nephi.cli.infer`."""

import sys

from nephi.cli.infer import main


if __name__ == "__main__":
    sys.exit(main())
