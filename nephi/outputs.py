"""A result folder written atomically: everything goes to a hidden sibling folder first and is
moved into place at the end, so an interrupted or failed run leaves no half-written folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .errors import NephiInputError


def check_output_dir(path: str, option: str = "--out") -> None:
    """Fail early (NephiInputError) when ``path`` cannot become a result folder.

    Creates nothing: the folder (and missing parents) are made only when results are written.
    """
    if not path or not str(path).strip():
        raise NephiInputError(f"{option}: empty folder name")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NephiInputError(f"{option} {path}: exists and is not a folder")
    # The nearest existing ancestor must be a writable folder (the result is staged beside it).
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        up = os.path.dirname(ancestor)
        if up == ancestor:
            break
        ancestor = up
    if not os.path.isdir(ancestor):
        raise NephiInputError(f"{option} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder {ancestor} is not writable")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder is not writable")


class AtomicDir:
    """Context manager yielding a temporary folder that becomes ``path`` on success.

    If ``path`` does not exist, the temporary folder is renamed to it. If it exists, each file
    is moved in with ``os.replace`` (each file appears whole). On error the temporary folder is
    removed and ``path`` is left as it was.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.tmp = None

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.partial-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if not os.path.exists(self.path):
            os.rename(self.tmp, self.path)
            return False
        for name in os.listdir(self.tmp):
            os.replace(os.path.join(self.tmp, name), os.path.join(self.path, name))
        os.rmdir(self.tmp)
        return False
