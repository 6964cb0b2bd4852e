"""What every nephi command shares: one-line errors with exit status 2, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import EXIT_INPUT_ERROR, NephiInputError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_INPUT_ERROR)


def run_cli(prog: str, fn: Callable[[list], int], argv: list) -> int:
    """Run ``fn(argv)``; input errors and Ctrl-C become one line on stderr and a non-zero status."""
    try:
        return fn(argv)
    except NephiInputError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted, nothing written\n")
        return 130
