"""Single output files of the nephi commands (``nephi-warp``, ``nephi-points``, ``nephi-eval``):
checked before any work, written so that they appear whole, with write failures reported as one
:class:`~nephi.errors.NephiInputError` naming the option and the file.

(Result folders are written with :class:`nephi.outputs.AtomicDir`.)
"""

from __future__ import annotations

import os
from typing import Callable

from .errors import NephiInputError


def check_output_path(path: str, option: str = "--out", suffixes: tuple | None = None) -> None:
    """An output file path: not empty, not a folder, ending in one of ``suffixes`` (when given),
    in a folder that exists and is writable or can be created."""
    if not path:
        raise NephiInputError(f"{option}: empty file name")
    if suffixes and not path.endswith(tuple(suffixes)):
        raise NephiInputError(f"{option} {path}: must end in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        raise NephiInputError(f"{option} {path}: is a folder")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder {ancestor} is not writable")


def write_file(path: str, write: Callable[[str], None], option: str = "--out") -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (same extension, so writers that go
    by the name, like nibabel's, pick the right format), then move it onto ``path``.

    Missing folders are created. Any OSError becomes a NephiInputError; the temporary file
    never stays behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = ".nii.gz" if base.endswith(".nii.gz") else os.path.splitext(base)[1]
    tmp = os.path.join(folder, f".{base[:len(base) - len(ext)]}.partial-{os.getpid()}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise NephiInputError(f"{option} {path}: cannot be written "
                              f"({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
