"""What every nephi command shares: one-line errors with exit status 2, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from nephi.errors import EXIT_INPUT_ERROR, NephiInputError


def one_line(text) -> str:
    """``text`` with line breaks folded into spaces, so an error stays on one stderr line."""
    return " ".join(str(text).split("\n")).replace("\r", " ").strip()


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        sys.exit(EXIT_INPUT_ERROR)


def run_cli(prog: str, fn: Callable[[list], int], argv=None) -> int:
    """Run ``fn(argv)`` (default: the process's arguments) and return its exit status.

    Input errors become one line on stderr and status 2; Ctrl-C one line and status 130;
    argparse's exits (usage errors, --help) their status, returned rather than raised.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return fn(argv)
    except NephiInputError as exc:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted, nothing written\n")
        return 130
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{prog}: error: {one_line(exc.code)}\n")
        return 1
